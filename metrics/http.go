package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgtenant/pgtenant/proxy"
)

// Status is the body served at /status.
type Status struct {
	Sessions []proxy.SessionInfo `json:"sessions"`
	Paused   []proxy.PauseInfo   `json:"paused"`
}

// Admin is what the admin endpoints report on and act on; a nil func
// serves an empty answer (or no endpoint, for Pause and Resume).
type Admin struct {
	// Ready checks the upstreams (only the one named, when not ""): see
	// proxy.Server.Readiness.
	Ready    func(ctx context.Context, upstream string) proxy.Readiness
	Sessions func() []proxy.SessionInfo
	Paused   func() []proxy.PauseInfo
	// Pause pauses a tenant, waiting up to the duration for its
	// transactions in progress to end; Resume resumes it.
	Pause  func(ctx context.Context, tenant string, wait time.Duration) proxy.PauseInfo
	Resume func(tenant string) (proxy.PauseInfo, error)
}

// Handler serves the read-only endpoints of AdminHandler.
func Handler(m *Metrics, ready func(context.Context, string) proxy.Readiness, sessions func() []proxy.SessionInfo) http.Handler {
	return AdminHandler(m, Admin{Ready: ready, Sessions: sessions})
}

// AdminHandler serves, for GET and HEAD:
//
//   - /metrics: m's registry in the Prometheus exposition format (404 when m
//     is nil);
//   - /healthz: 200 "ok" while the process runs;
//   - /readyz: 200 when Ready says ready (or is nil), else 503; the text
//     says why on its first line ("ok" when ready), then each upstream
//     checked on a line of its own ("eu: ok", "eu: unreachable: ...").
//     /readyz?upstream=eu checks that upstream only (404 when the
//     configuration has none of that name). Ready gets the request's
//     context;
//   - /status: JSON {"sessions": [...], "paused": [...]} (empty lists when
//     the funcs are nil or return nil);
//
// and for POST (when a.Pause and a.Resume are set):
//
//   - /tenants/{tenant}/pause[?wait=30s]: pauses the tenant; with wait,
//     answers once none of its transactions is in progress or wait has
//     passed (the answer's in_transaction says which); JSON PauseInfo;
//   - /tenants/{tenant}/resume: resumes it (404 if it is not paused);
//     JSON PauseInfo, with the sessions moved.
//
// Other methods get 405. Browsers' cross-origin POSTs are refused (403),
// so that a web page cannot pause a tenant through an operator's browser.
// /status lists users, tenants and client addresses: serve AdminHandler on
// an address only operators can reach.
func AdminHandler(m *Metrics, a Admin) http.Handler {
	mux := http.NewServeMux()
	if m != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
			Registry:          m.reg, // counts promhttp's own errors
			ErrorHandling:     promhttp.ContinueOnError,
			EnableOpenMetrics: true,
		}))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if a.Ready == nil {
			writeText(w, http.StatusOK, "ok")
			return
		}
		rd := a.Ready(r.Context(), r.URL.Query().Get("upstream"))
		code := http.StatusOK
		switch {
		case rd.Unknown:
			code = http.StatusNotFound
		case !rd.Ready():
			code = http.StatusServiceUnavailable
		}
		writeText(w, code, strings.TrimSuffix(rd.String(), "\n"))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		var st Status
		if a.Sessions != nil {
			st.Sessions = a.Sessions()
		}
		if st.Sessions == nil {
			st.Sessions = []proxy.SessionInfo{}
		}
		if a.Paused != nil {
			st.Paused = a.Paused()
		}
		if st.Paused == nil {
			st.Paused = []proxy.PauseInfo{}
		}
		writeJSON(w, http.StatusOK, st)
	})
	if a.Pause != nil && a.Resume != nil {
		mux.HandleFunc("POST /tenants/{tenant}/pause", func(w http.ResponseWriter, r *http.Request) {
			var wait time.Duration
			if v := r.URL.Query().Get("wait"); v != "" {
				var err error
				if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
					writeText(w, http.StatusBadRequest, "wait: not a duration like 30s: "+v)
					return
				}
			}
			writeJSON(w, http.StatusOK, a.Pause(r.Context(), r.PathValue("tenant"), wait))
		})
		mux.HandleFunc("POST /tenants/{tenant}/resume", func(w http.ResponseWriter, r *http.Request) {
			info, err := a.Resume(r.PathValue("tenant"))
			if errors.Is(err, proxy.ErrNotPaused) {
				writeText(w, http.StatusNotFound, fmt.Sprintf("tenant %q is not paused", info.Tenant))
				return
			}
			writeJSON(w, http.StatusOK, info)
		})
	}
	return http.NewCrossOriginProtection().Handler(mux)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		writeText(w, http.StatusInternalServerError, err.Error())
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}

func writeText(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg + "\n"))
}
