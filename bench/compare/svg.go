package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Chart geometry, in SVG user units (pixels).
const (
	barW       = 16
	barGap     = 2
	groupGap   = 16 // between client counts
	protoGap   = 14 // extra, between protocols
	modeGap    = 34 // extra, between pool modes
	plotTop    = 84
	plotH      = 300
	marginL    = 72
	marginR    = 24
	labelsH    = 76
	minWidth   = 600 // room for the title and legend
	fontFamily = "system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif"
)

// series are the bars of a group, in drawing order.
var series = []struct{ target, label, color string }{
	{"direct", "direct PostgreSQL", "#9aa0a6"},
	{"pgbouncer", "PgBouncer", "#4e79a7"},
	{"pgtenant", "pgtenant", "#f28e2b"},
}

// chart draws grouped bars of median TPS: one group of direct / PgBouncer /
// pgtenant per (mode, protocol, clients), written by hand so that the
// benchmark needs no plotting dependency. Direct has no pool mode; its bar
// is repeated in each mode's groups as the reference.
func chart(o options, st map[cellKey]stat) []byte {
	rs := rows(o, st)
	groupW := len(series)*barW + (len(series)-1)*barGap

	// Lay groups out left to right and remember where blocks start and end
	// for the protocol and mode labels under the axis.
	type span struct {
		label      string
		start, end float64
	}
	var (
		groupX       []float64
		protos, mods []span
		x            float64
	)
	// shift centres a small matrix in a chart wide enough for the titles.
	layout := func(shift float64) {
		groupX, protos, mods = nil, nil, nil
		x = marginL + groupGap + shift
		for i, r := range rs {
			if i > 0 {
				prev := rs[i-1]
				switch {
				case r.mode != prev.mode:
					x += modeGap + protoGap
				case r.protocol != prev.protocol:
					x += protoGap
				}
			}
			if i == 0 || r.mode != rs[i-1].mode {
				mods = append(mods, span{r.mode + " mode", x, x})
			}
			if i == 0 || r.mode != rs[i-1].mode || r.protocol != rs[i-1].protocol {
				protos = append(protos, span{r.protocol, x, x})
			}
			groupX = append(groupX, x)
			x += float64(groupW)
			mods[len(mods)-1].end = x
			protos[len(protos)-1].end = x
			x += groupGap
		}
	}
	layout(0)
	width := x + marginR
	if width < minWidth {
		layout((minWidth - width) / 2)
		width = minWidth
	}
	height := float64(plotTop + plotH + labelsH)
	plotBottom := float64(plotTop + plotH)

	maxTPS := 0.0
	for _, r := range rs {
		for _, s := range []stat{r.direct, r.bouncer, r.tenant} {
			if s.ok() {
				maxTPS = max(maxTPS, s.tps)
			}
		}
	}
	top, step := niceScale(maxTPS)
	y := func(v float64) float64 { return plotBottom - v/top*plotH }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="%s" font-size="12">`+"\n",
		width, height, width, height, fontFamily)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="#ffffff"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="16" font-weight="600" fill="#202124">pgbench -S: median TPS (higher is better)</text>`+"\n", marginL)
	sub := fmt.Sprintf("%d round(s) of %s per bar", o.rounds, o.duration)
	if slices.Contains(o.modes, "transaction") {
		sub += fmt.Sprintf("; transaction mode: %d upstream connections", o.poolSize)
	}
	fmt.Fprintf(&b, `<text x="%d" y="42" fill="#5f6368">%s</text>`+"\n", marginL, esc(sub))

	// Legend, under the subtitle.
	lx := float64(marginL)
	for _, s := range series {
		fmt.Fprintf(&b, `<rect x="%.0f" y="54" width="12" height="12" fill="%s"/><text x="%.0f" y="64.5">%s</text>`+"\n",
			lx, s.color, lx+16, esc(s.label))
		lx += 16 + 7.5*float64(len(s.label)) + 20 // no text metrics in SVG: estimate
	}

	// Grid and y axis.
	for v := 0.0; v <= top+step/2; v += step {
		fmt.Fprintf(&b, `<line x1="%d" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#e8eaed"/>`+"\n", marginL, width-marginR, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#5f6368">%s</text>`+"\n", marginL-6, y(v)+4, esc(shortNum(v)))
	}
	fmt.Fprintf(&b, `<text transform="translate(16 %.0f) rotate(-90)" text-anchor="middle" fill="#5f6368">transactions per second</text>`+"\n", plotBottom-plotH/2)

	// Bars.
	for i, r := range rs {
		for j, s := range []stat{r.direct, r.bouncer, r.tenant} {
			bx := groupX[i] + float64(j*(barW+barGap))
			name := series[j].label
			if j > 0 {
				name += " (" + r.mode + ")"
			}
			if !s.ok() {
				what := "skipped"
				if s.failed > 0 {
					what = "failed"
				}
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="9" text-anchor="middle" fill="#9aa0a6"><title>%s</title>n/a</text>`+"\n",
					bx+barW/2, plotBottom-4, esc(fmt.Sprintf("%s, %s, %d clients: %s", name, r.protocol, r.clients, what)))
				continue
			}
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s</title></rect>`+"\n",
				bx, y(s.tps), barW, plotBottom-y(s.tps), series[j].color,
				esc(fmt.Sprintf("%s, %s, %d clients: %.0f TPS, %.3f ms", name, r.protocol, r.clients, s.tps, s.latencyMS)))
		}
	}
	fmt.Fprintf(&b, `<line x1="%d" x2="%.0f" y1="%.1f" y2="%.1f" stroke="#5f6368"/>`+"\n", marginL, width-marginR, plotBottom, plotBottom)

	// Labels under the axis: client counts, then protocols, then modes.
	fmt.Fprintf(&b, `<text x="%d" y="%.0f" text-anchor="end" fill="#5f6368">clients</text>`+"\n", marginL-6, plotBottom+17)
	for i, r := range rs {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%d</text>`+"\n", groupX[i]+float64(groupW)/2, plotBottom+17, r.clients)
	}
	for _, p := range protos {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#bdc1c6"/>`+"\n", p.start, p.end, plotBottom+25, plotBottom+25)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", (p.start+p.end)/2, plotBottom+40, esc(p.label))
	}
	for i, md := range mods {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle" font-weight="600">%s</text>`+"\n", (md.start+md.end)/2, plotBottom+64, esc(md.label))
		if i > 0 {
			sx := (mods[i-1].end + md.start) / 2
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.0f" stroke="#bdc1c6" stroke-dasharray="4 4"/>`+"\n", sx, sx, plotTop-6, plotBottom+70)
		}
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

// niceScale returns an axis maximum at or above v and a tick step of 1, 2
// or 5 times a power of ten, giving 4 to 10 ticks.
func niceScale(v float64) (top, step float64) {
	if v <= 0 {
		return 1, 0.25
	}
	raw := v / 5
	pow := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if step = m * pow; step >= raw {
			break
		}
	}
	return math.Ceil(v/step) * step, step
}

// shortNum formats axis values: 25000 -> "25k".
func shortNum(v float64) string {
	switch {
	case v >= 1e6:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e6), ".0") + "M"
	case v >= 1e3:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e3), ".0") + "k"
	default:
		return fmt.Sprintf("%.0f", v)
	}
}

var xmlEscaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;")

func esc(s string) string { return xmlEscaper.Replace(s) }
