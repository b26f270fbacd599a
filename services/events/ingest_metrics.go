package events

import (
	"github.com/prometheus/client_golang/prometheus"

	"cyrus-sidecar/services/listen"
)

// The ingest collectors are package-level like the other services'; serve
// registers them through (*Ingest).Collectors when metrics are on.
var (
	evReceived = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "events", Name: "received_total",
		Help: "Event datagrams (class EVENT) received from Cyrus and queued or dropped on overflow.",
	})
	evDropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "events", Name: "dropped_total",
		Help: "Datagrams dropped, by reason: overflow (the in-memory ring was full; the account is marked for re-check), uid (not sent by Cyrus's user), malformed (bad framing or JSON).",
	}, []string{"reason"})
	evIgnored = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "events", Name: "ignored_total",
		Help: "Well-formed events not passed on, by reason: event_type (Login, Quota*, unknown), mailbox_type (not mail), no_owner (#sieve), deleted, class (not EVENT).",
	}, []string{"reason"})
	evRelayed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "events", Name: "relay_total",
		Help: "Non-EVENT datagrams (Sieve notify, mailnotifier) relayed to notifyd, by result: ok, error (notifyd absent or its queue full), disabled (no relay socket configured).",
	}, []string{"result"})
	evCoalesced = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: listen.Namespace, Subsystem: "events", Name: "coalesced_total",
		Help: "Events merged away per mailbox, by kind: modseq (a MailboxModseq covered by a specific event), storm (events over the per-mailbox cap, folded into one mailbox.changed).",
	}, []string{"kind"})

	// Children resolved once: the reader's hot path must not hash labels.
	droppedOverflow  = evDropped.WithLabelValues("overflow")
	droppedUID       = evDropped.WithLabelValues("uid")
	droppedMalformed = evDropped.WithLabelValues("malformed")
	relayOK          = evRelayed.WithLabelValues("ok")
	relayError       = evRelayed.WithLabelValues("error")
	relayDisabled    = evRelayed.WithLabelValues("disabled")
	coalescedModseq  = evCoalesced.WithLabelValues("modseq")
	coalescedStorm   = evCoalesced.WithLabelValues("storm")
)

// ignoredBy is the events_ignored_total child for a reason.
func ignoredBy(reason string) prometheus.Counter { return evIgnored.WithLabelValues(reason) }

// Collectors are the ingest's metrics, for serve to register.
func (in *Ingest) Collectors() []prometheus.Collector {
	return []prometheus.Collector{evReceived, evDropped, evIgnored, evRelayed, evCoalesced,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: listen.Namespace, Subsystem: "events", Name: "ring_queued",
			Help: "Datagrams waiting in the in-memory ring.",
		}, func() float64 { return float64(len(in.ring)) }),
	}
}
