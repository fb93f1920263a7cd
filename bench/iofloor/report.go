//go:build linux

package main

import (
	"fmt"
	"strings"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
)

// report renders one markdown table per (protocol, clients) cell: medians
// over rounds, and each proxy's CPU per transaction relative to PgBouncer's.
func report(m *meta, o options, results, sys []result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "`go run ./bench/iofloor %s` — %s, %s, %d CPUs, load average before %s; PostgreSQL %s, PgBouncer %s.\n\n",
		strings.Join(m.args, " "), m.started.UTC().Format("2006-01-02 15:04 UTC"), m.elapsed, m.cpus, m.load, m.pg, m.pgbouncer)
	fmt.Fprintf(&b, "pgbench -n -S, scale 10, %d round(s) of %s per cell and target, medians. CPU is the proxy process's utime+stime over the run (logins included) per transaction; ctx sw are the context switches of all its threads; syscalls are from one extra %s run with `perf stat -e raw_syscalls:sys_enter`.\n\n",
		o.rounds, o.duration, o.sysDuration)
	for _, proto := range o.protocols {
		for _, clients := range o.clients {
			fmt.Fprintf(&b, "**%s, %d client(s)**\n\n", proto, clients)
			b.WriteString("| target | tps | latency ms | CPU µs/tx | CPU vs PgBouncer | ctx sw/tx | syscalls/tx |\n|---|--:|--:|--:|--:|--:|--:|\n")
			bouncer := cellMedians(results, proto, clients, "pgbouncer")
			for _, t := range m.targets {
				s := cellMedians(results, proto, clients, t.label)
				if s.runs == 0 {
					fmt.Fprintf(&b, "| %s | failed | | | | | |\n", t.label)
					continue
				}
				cpu, vs, cs, sc := "–", "–", "–", "–"
				if t.pid != 0 {
					cpu = fmt.Sprintf("%.1f", s.cpu)
					cs = fmt.Sprintf("%.2f", s.cs)
					if bouncer.runs > 0 && bouncer.cpu > 0 {
						vs = fmt.Sprintf("%.2fx", s.cpu/bouncer.cpu)
					}
					for _, r := range sys {
						if r.protocol == proto && r.clients == clients && r.target == t.label && r.err == "" {
							sc = fmt.Sprintf("%.2f", r.sysPerTx)
						}
					}
				}
				label := t.label
				if t.note != "" {
					label += " (" + t.note + ")"
				}
				fmt.Fprintf(&b, "| %s | %.0f | %.3f | %s | %s | %s | %s |\n", label, s.tps, s.lat, cpu, vs, cs, sc)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

type cellStat struct {
	runs              int
	tps, lat, cpu, cs float64
}

func cellMedians(results []result, proto string, clients int, label string) cellStat {
	var tps, lat, cpu, cs []float64
	for _, r := range results {
		if r.protocol == proto && r.clients == clients && r.target == label && r.err == "" {
			tps, lat, cpu, cs = append(tps, r.tps), append(lat, r.latencyMS), append(cpu, r.cpuPerTx), append(cs, r.csPerTx)
		}
	}
	if len(tps) == 0 {
		return cellStat{}
	}
	return cellStat{runs: len(tps), tps: benchutil.Median(tps), lat: benchutil.Median(lat), cpu: benchutil.Median(cpu), cs: benchutil.Median(cs)}
}
