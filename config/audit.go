package config

import (
	"fmt"
	"math"
	"strings"
)

// Audit defaults.
const (
	DefaultAuditBuffer = 10000
	AuditStdout        = "stdout"
)

// Audit configures the per-tenant audit log: one JSON line per statement.
// The log is off unless the section is present.
type Audit struct {
	// Output is "stdout" or the path of a file, opened for appending.
	Output string `yaml:"output"`
	// SampleRate is the share of each tenant's statements logged, 0 to 1;
	// default 1. Refusals and failed logins are always logged.
	SampleRate *float64 `yaml:"sample_rate"`
	// TenantSampleRates overrides SampleRate per tenant.
	TenantSampleRates map[string]float64 `yaml:"tenant_sample_rates"`
	// Buffer is how many lines may wait for the writer; past it lines are
	// dropped (and counted) rather than slow a session. Default 10000.
	Buffer int `yaml:"buffer"`
}

// Rate returns the sample rate of tenant.
func (a *Audit) Rate(tenant string) float64 {
	if r, ok := a.TenantSampleRates[tenant]; ok {
		return r
	}
	if a.SampleRate == nil {
		return 1
	}
	return *a.SampleRate
}

func (c *Config) validateAudit(add func(field, format string, args ...any)) {
	a := c.Audit
	if a == nil {
		return
	}
	if a.Buffer == 0 {
		a.Buffer = DefaultAuditBuffer
	}
	if strings.TrimSpace(a.Output) == "" {
		add("audit.output", "must be set: %q or the path of a file", AuditStdout)
	}
	rate := func(field string, r float64) {
		if math.IsNaN(r) || r < 0 || r > 1 {
			add(field, "%v is not a sample rate: write a number from 0 (none) to 1 (every statement)", r)
		}
	}
	if a.SampleRate != nil {
		rate("audit.sample_rate", *a.SampleRate)
	}
	for tenant, r := range a.TenantSampleRates {
		rate(fmt.Sprintf("audit.tenant_sample_rates[%q]", tenant), r)
	}
	if a.Buffer < 0 {
		add("audit.buffer", "must not be negative")
	}
}
