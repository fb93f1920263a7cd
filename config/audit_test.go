package config

import (
	"strings"
	"testing"
)

func TestAuditSection(t *testing.T) {
	tests := []struct {
		desc    string
		section string
		wantErr string             // "" for a valid config
		rates   map[string]float64 // tenant -> rate expected
		buffer  int
	}{
		{desc: "absent: off", section: ""},
		{desc: "stdout, defaults", section: "audit: {output: stdout}",
			rates: map[string]float64{"acme": 1}, buffer: DefaultAuditBuffer},
		{desc: "file, rate and override", section: "audit:\n  output: /var/log/pgtenant/audit.jsonl\n  sample_rate: 0.25\n  buffer: 10\n  tenant_sample_rates: {acme: 1, beta: 0}",
			rates: map[string]float64{"acme": 1, "beta": 0, "other": 0.25}, buffer: 10},
		{desc: "no output", section: "audit: {sample_rate: 1}", wantErr: `audit.output: must be set: "stdout" or the path of a file`},
		{desc: "rate above 1", section: "audit: {output: stdout, sample_rate: 1.5}", wantErr: "audit.sample_rate: 1.5 is not a sample rate: write a number from 0 (none) to 1 (every statement)"},
		{desc: "negative override", section: "audit: {output: stdout, tenant_sample_rates: {acme: -0.1}}", wantErr: `audit.tenant_sample_rates["acme"]: -0.1 is not a sample rate`},
		{desc: "negative buffer", section: "audit: {output: stdout, buffer: -1}", wantErr: "audit.buffer: must not be negative"},
		{desc: "typo", section: "audit: {output: stdout, sample_rte: 1}", wantErr: `unknown key "sample_rte" in audit (did you mean "sample_rate"?)`},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c, err := Parse([]byte(minimal + tt.section + "\n"))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse error = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if tt.section == "" {
				if c.Audit != nil {
					t.Fatalf("Audit = %+v, want nil (off by default)", c.Audit)
				}
				return
			}
			for tenant, want := range tt.rates {
				if got := c.Audit.Rate(tenant); got != want {
					t.Errorf("Rate(%q) = %v, want %v", tenant, got, want)
				}
			}
			if c.Audit.Buffer != tt.buffer {
				t.Errorf("Buffer = %d, want %d", c.Audit.Buffer, tt.buffer)
			}
		})
	}
}
