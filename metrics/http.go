package metrics

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgtenant/pgtenant/proxy"
)

// Status is the body served at /status.
type Status struct {
	Sessions []proxy.SessionInfo `json:"sessions"`
}

// Handler serves, for GET and HEAD only (other methods get 405):
//
//   - /metrics: m's registry in the Prometheus exposition format (404 when m
//     is nil);
//   - /healthz: 200 "ok" while the process runs;
//   - /readyz: 200 "ok" when ready returns nil (or ready is nil), else 503
//     with the error text; ready gets the request's context;
//   - /status: JSON {"sessions": [...]} from sessions (an empty list when
//     sessions is nil or returns nil).
//
// /status lists users, tenants and client addresses: serve Handler on an
// address only operators can reach.
func Handler(m *Metrics, ready func(context.Context) error, sessions func() []proxy.SessionInfo) http.Handler {
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
		if ready != nil {
			if err := ready(r.Context()); err != nil {
				writeText(w, http.StatusServiceUnavailable, err.Error())
				return
			}
		}
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		var st Status
		if sessions != nil {
			st.Sessions = sessions()
		}
		if st.Sessions == nil {
			st.Sessions = []proxy.SessionInfo{}
		}
		body, err := json.Marshal(st)
		if err != nil {
			writeText(w, http.StatusInternalServerError, err.Error())
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(append(body, '\n'))
	})
	return mux
}

func writeText(w http.ResponseWriter, code int, msg string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(msg + "\n"))
}
