package lmtp

import (
	"errors"
	"testing"

	"github.com/emersion/go-smtp"
)

func TestMetricLabels(t *testing.T) {
	for _, c := range []struct {
		err          error
		rcpt, status string
	}{
		{nil, "accepted", "delivered"},
		{errUnknown, "unknown", "rejected"},
		{errDisabled, "disabled", "rejected"},
		{errNotHosted, "not_hosted", "rejected"},
		{errMalformed, "malformed", "rejected"},
		{errStore, "deferred", "deferred"},
		{unavailable(errors.New("connection refused")), "deferred", "deferred"},
		{&smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "Over quota"}, "refused_by_cyrus", "deferred"},
		{&smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 2, 2}, Message: "Over quota"}, "refused_by_cyrus", "rejected"},
		// Cyrus's own 550 5.1.1 (a mailbox the store knows but Cyrus
		// does not) is Cyrus's refusal, not the store's "unknown".
		{&smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "Mailbox unknown"}, "refused_by_cyrus", "rejected"},
		{&smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 1, 5}, Message: "Delivered to some"}, "accepted", "delivered"},
		{errors.New("panic"), "deferred", "deferred"},
	} {
		if got := rcptResult(c.err); got != c.rcpt {
			t.Errorf("rcptResult(%v) = %q, want %q", c.err, got, c.rcpt)
		}
		if got := statusResult(c.err); got != c.status {
			t.Errorf("statusResult(%v) = %q, want %q", c.err, got, c.status)
		}
	}
}
