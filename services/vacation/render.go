package vacation

// Rendering one user's out-of-office script: RFC 5228 (Sieve), 5230
// (vacation), 5260 (date), 5231 (relational) and 6134 (extlists), as
// Cyrus 3.6 compiles them (sieve/sieve.y, sieve/sieve-lex.l) and runs them
// (sieve/bc_eval.c, imap/lmtp_sieve.c).

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// MinDays is Cyrus's default sieve_vacation_min_response (3 days): asking
// for less gets 3; Render does not change Days, callers warn.
const MinDays = 3

const (
	// maxScriptSize is Cyrus's default sieve_maxscriptsize (32 KiB):
	// timsieved refuses a longer script at PUTSCRIPT (timsieved/lex.c).
	maxScriptSize = 32 * 1024
	// sieveMaxDays: Cyrus computes ":days n" as n*86400 in a C int
	// (sieve.y), so a larger n wraps and acts as the minimum.
	sieveMaxDays = math.MaxInt32 / (24 * 60 * 60)
	// maxSubjectRunes is the subject limit Outlook and Exchange apply.
	maxSubjectRunes = 255
	// maxPeriodBytes bounds the absence-period id that goes into :handle.
	maxPeriodBytes = 200
	// sieveDateLayout is what Cyrus's currentdate "iso8601" yields with
	// :zone "+0000" (lib/times.c time_to_iso8601); the comparison is
	// between strings, so the bounds must use exactly this form.
	sieveDateLayout = "2006-01-02T15:04:05Z"
	// knownList is the user's default CardDAV address book (RFC 6134
	// §2.3; Cyrus's lmtp_sieve.c accepts this short form).
	knownList = ":addrbook:Default"
)

// Audiences for Settings.Audience, after Exchange's ExternalAudience.
const (
	audienceAll   = "all"
	audienceKnown = "known"
	audienceNone  = "none"
)

// ErrOff is Render's answer for a vacation that is off: there is no script.
var ErrOff = errors.New("vacation is off: no script to render")

// Classes of Render's errors, for errors.Is.
var (
	errSieveInput     = errors.New("invalid vacation settings")
	errSieveExtension = errors.New("the server's SIEVE capability lacks")
	errSieveSize      = errors.New("vacation script too large")
)

// DefaultExtensions is Cyrus 3.6's default SIEVE capability list, in the
// order timsieved announces it (for `vacation preview` without a server).
var DefaultExtensions = []string{
	"encoded-character", "comparator-i;ascii-numeric", "fileinto", "reject", "ereject",
	"vacation", "vacation-seconds", "notify", "enotify", "include", "editheader",
	"vnd.cyrus.snooze", "vnd.cyrus.imip", "envelope", "environment", "body", "imap4flags",
	"date", "ihave", "mailbox", "mboxmetadata", "servermetadata", "duplicate",
	"vnd.cyrus.jmapquery", "relational", "regex", "extlists", "subaddress", "copy", "index",
	"variables", "redirect-deliverby", "redirect-dsn", "special-use", "fcc", "mailboxid",
}

// Settings are a user's out-of-office settings as stored.
type Settings struct {
	State        string    // "on" (no window) or "scheduled" (Start/End bound it); "off" renders nothing (Render returns ErrOff)
	Start, End   time.Time // UTC; zero = open on that side (a scheduled vacation needs at least one)
	Subject      string
	InternalText string
	ExternalText string
	Audience     string // external audience: "all", "known" (only senders in the user's Cyrus address book, extlists ":addrbook:Default"), "none"
	Days         int    // reply interval (RFC 5230 :days); 0 = Cyrus's default (7)
	From         string // optional :from address
}

// Input is everything Render needs.
type Input struct {
	Settings
	User           string   // the user's canonical address
	Addresses      []string // every address that reaches the user (own + aliases), for :addresses (Cyrus suppresses replies to mail naming none of them)
	OrgDomains     []string // the organisation's domains, for the envelope fallback
	RelationHeader string   // header stamped by our LMTP proxy ("X-Sidecar-Sender-Relation: internal|external"); "" = decide by `envelope :domain :is "from" [OrgDomains]` (spoofable: say so in the comment)
	Period         string   // identifies this absence period (changes when the vacation is re-enabled or its dates change); used in :handle so each sender gets one reply per absence and per audience (Exchange behaviour)
	Extensions     []string // the SIEVE capability the server announced; Render requires only what it uses and fails clearly when one is missing
}

// Render returns the script text (CRLF line ends) or an error naming every
// problem: an invalid setting (errSieveInput), an extension the server
// lacks (errSieveExtension) or a script over 32 KiB (errSieveSize).
//
// Start and End are taken to the second (truncated) and in UTC; End is
// excluded. State "on" ignores them. Texts get CRLF line ends and always
// end with one; Cyrus adds one more line end when it sends the reply.
func Render(in Input) (string, error) {
	if in.State == "off" {
		return "", ErrOff
	}
	p, err := checkInput(in)
	if err != nil {
		return "", err
	}
	script := p.write(in)
	if len(script) > maxScriptSize {
		return "", fmt.Errorf("%w: %d bytes, the limit is %d (Cyrus's sieve_maxscriptsize); shorten the texts",
			errSieveSize, len(script), maxScriptSize)
	}
	return script, nil
}

// scriptPlan is the checked and normalised input.
type scriptPlan struct {
	start, end         string // window bounds in sieveDateLayout; "" = open
	internal, external string // normalised texts
	addresses, domains []string
	need               []string // extensions, in require order
}

// checkInput validates in and reports every problem at once.
func checkInput(in Input) (*scriptPlan, error) {
	s := in.Settings
	p := &scriptPlan{}
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", errSieveInput, field, fmt.Sprintf(format, args...)))
	}

	switch s.State {
	case "on":
	case "scheduled":
		if s.Start.IsZero() && s.End.IsZero() {
			bad("start, end", "a scheduled vacation needs a start or an end")
		}
		p.start, p.end = sieveDate(s.Start, "start", bad), sieveDate(s.End, "end", bad)
		if p.start != "" && p.end != "" && p.end <= p.start {
			bad("end", "%s is not after the start %s", p.end, p.start)
		}
	default:
		bad("state", `must be "on", "scheduled" or "off", got %q`, s.State)
	}
	switch s.Audience {
	case audienceAll, audienceKnown, audienceNone:
	default:
		bad("audience", `must be "all", "known" or "none", got %q`, s.Audience)
	}

	p.internal = checkText("internal text", s.InternalText, bad)
	if s.Audience == audienceAll || s.Audience == audienceKnown {
		p.external = checkText("external text", s.ExternalText, bad)
	}
	checkSubject(s.Subject, bad)
	if s.Days < 0 || s.Days > sieveMaxDays {
		bad("days", "must be 0 (Cyrus's default) to %d, got %d", sieveMaxDays, s.Days)
	}
	if s.From != "" && !validAddrSpec(s.From) {
		bad("from", "%q is not a plain address (local@domain)", s.From)
	}
	if !validAddrSpec(in.User) {
		bad("user", "%q is not a plain address (local@domain)", in.User)
	}
	p.addresses = dedupeFold(append([]string{in.User}, in.Addresses...))
	for _, a := range p.addresses[1:] {
		if !validAddrSpec(a) {
			bad("addresses", "%q is not a plain address (local@domain)", a)
		}
	}
	switch {
	case in.Period == "":
		bad("period", "is empty")
	case len(in.Period) > maxPeriodBytes || !utf8.ValidString(in.Period) || strings.ContainsFunc(in.Period, isControl):
		bad("period", "must be printable UTF-8 of at most %d bytes", maxPeriodBytes)
	}
	p.domains = dedupeFold(in.OrgDomains)
	if in.RelationHeader != "" {
		if !validFieldName(in.RelationHeader) {
			bad("relation header", "%q is not a header field name (RFC 5322 §3.6.8)", in.RelationHeader)
		}
	} else {
		if len(p.domains) == 0 {
			bad("org domains", "none given, and no relation header to tell internal senders")
		}
		for _, d := range p.domains {
			if !validDomain(d) {
				bad("org domains", "%q is not a domain name", d)
			}
		}
	}

	// RFC 5228 §3.2: require exactly the extensions used.
	p.need = []string{"vacation"}
	if p.start != "" || p.end != "" {
		p.need = append(p.need, "date", "relational") // currentdate, :value
	}
	if in.RelationHeader == "" || s.Audience == audienceKnown {
		p.need = append(p.need, "envelope")
	}
	if s.Audience == audienceKnown {
		p.need = append(p.need, "extlists")
	}
	var missing []string
	for _, e := range p.need {
		if !slices.Contains(in.Extensions, e) {
			missing = append(missing, e)
		}
	}
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("%w %q, which the script needs", errSieveExtension, missing))
	}
	return p, errors.Join(errs...)
}

// write renders the checked input.
func (p *scriptPlan) write(in Input) string {
	s := in.Settings
	w := &scriptWriter{}
	w.line(0, "require "+sieveList(p.need)+";")
	w.line(0, "# Generated by cyrus-sidecar: do not edit; changed by `cyrus-sidecar vacation set`.")
	w.comments(s.State, p.start, p.end, in.RelationHeader, s.Audience)
	depth := 0
	if p.start != "" || p.end != "" {
		depth = 1
		ge := `currentdate :zone "+0000" :value "ge" "iso8601" ` + sieveQuote(p.start)
		lt := `currentdate :zone "+0000" :value "lt" "iso8601" ` + sieveQuote(p.end)
		switch {
		case p.end == "":
			w.line(0, "if "+ge+" {")
		case p.start == "":
			w.line(0, "if "+lt+" {")
		default:
			w.line(0, "if allof ("+ge+",")
			w.line(0, "          "+lt+") {")
		}
	}
	if in.RelationHeader != "" {
		w.line(depth, "if header :is "+sieveQuote(in.RelationHeader)+` "internal" {`)
	} else {
		w.line(depth, `if envelope :domain :is "from" `+sieveList(p.domains)+" {")
	}
	v := vacationArgs{days: s.Days, addresses: p.addresses, subject: s.Subject, from: s.From}
	w.vacation(depth+1, v, in.Period+"-int", p.internal)
	switch s.Audience {
	case audienceAll:
		w.line(depth, "} else {")
		w.vacation(depth+1, v, in.Period+"-ext", p.external)
	case audienceKnown:
		// The envelope sender, as for internal mail: the reply goes there.
		w.line(depth, `} elsif envelope :list "from" `+sieveQuote(knownList)+" {")
		w.vacation(depth+1, v, in.Period+"-ext", p.external)
	}
	w.line(depth, "}")
	if depth > 0 {
		w.line(0, "}")
	}
	return w.b.String()
}

// sieveDate formats a window bound; "" for an open side.
func sieveDate(t time.Time, field string, bad func(string, string, ...any)) string {
	if t.IsZero() {
		return ""
	}
	t = t.UTC().Truncate(time.Second)
	if t.Year() < 1 || t.Year() > 9999 {
		bad(field, "year %d is outside 1 to 9999", t.Year())
		return ""
	}
	return t.Format(sieveDateLayout)
}

// checkText validates a reply text and returns it normalised.
func checkText(field, s string, bad func(string, string, ...any)) string {
	switch {
	case !utf8.ValidString(s):
		bad(field, "is not valid UTF-8") // Cyrus checks with verify_utf8
	case strings.ContainsRune(s, 0):
		bad(field, "contains a NUL character") // ends the string in Cyrus
	case strings.TrimSpace(s) == "":
		bad(field, "is empty")
	default:
		return normaliseText(s)
	}
	return ""
}

// checkSubject: Cyrus cuts the reply's subject at the first control
// character (lmtp_sieve.c send_response), so those are refused here.
func checkSubject(s string, bad func(string, string, ...any)) {
	switch {
	case !utf8.ValidString(s):
		bad("subject", "is not valid UTF-8")
	case strings.ContainsAny(s, "\r\n"):
		bad("subject", "contains a line break (CR or LF)")
	case strings.ContainsFunc(s, isControl):
		i := strings.IndexFunc(s, isControl)
		bad("subject", "contains the control character %U", rune(s[i]))
	case utf8.RuneCountInString(s) > maxSubjectRunes:
		bad("subject", "is longer than %d characters", maxSubjectRunes)
	}
}

// isControl reports the ASCII control characters (C0 and DEL).
func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// normaliseText gives every line a CRLF end (RFC 5228 §2.4.2: a text:
// block is lines, each ending CRLF), whatever the text used: CRLF, LF or
// CR. One final line end is implied, so "x" and "x\n" are the same text.
func normaliseText(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	s = strings.TrimSuffix(s, "\n")
	return strings.ReplaceAll(s, "\n", "\r\n") + "\r\n"
}

// sieveTextBlock renders a normalised text as a multi-line string (RFC 5228
// §2.4.2): a leading "." is doubled on every line so that no line of the
// text reads as the terminating ".".
func sieveTextBlock(text string) string {
	var b strings.Builder
	b.WriteString("text:\r\n")
	for line := range strings.Lines(text) {
		if line[0] == '.' {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return b.String()
}

// sieveQuote renders a quoted string (RFC 5228 §2.4.2): only `\` and `"`
// are escaped. No extension that reads more into a string is required
// (variables, encoded-character), so "${...}" stays literal.
func sieveQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// sieveList renders a string list (RFC 5228 §2.4.2.1).
func sieveList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = sieveQuote(s)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// dedupeFold drops later duplicates, ignoring case; the order stays as
// given.
func dedupeFold(items []string) []string {
	var out []string
	seen := make(map[string]bool)
	for _, s := range items {
		k := strings.ToLower(s)
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, s)
	}
	return out
}

// validAddrSpec accepts a plain address, local@domain, with a dot-atom
// local part (RFC 5322 §3.4.1; UTF-8 as RFC 6531 allows). Quoted local
// parts and display names are refused: Cyrus copies a :from containing
// "<" into the reply's From header verbatim.
func validAddrSpec(s string) bool {
	local, domain, ok := strings.Cut(s, "@")
	if !ok || len(s) > 254 || len(local) > 64 || !utf8.ValidString(s) || !validDomain(domain) {
		return false
	}
	for atom := range strings.SplitSeq(local, ".") {
		if atom == "" || strings.ContainsFunc(atom, func(r rune) bool {
			return r < 0x80 && !isAlnum(r) && !strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", r)
		}) {
			return false
		}
	}
	return true
}

// validDomain accepts dot-separated labels of letters, digits, hyphens and
// (for IDN in UTF-8) non-ASCII letters (RFC 5321 §4.1.2, RFC 6531).
func validDomain(s string) bool {
	if s == "" || len(s) > 253 || !utf8.ValidString(s) {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' ||
			strings.ContainsFunc(label, func(r rune) bool { return r < 0x80 && !isAlnum(r) && r != '-' }) {
			return false
		}
	}
	return true
}

func isAlnum(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9'
}

// validFieldName: printable ASCII except ":" (RFC 5322 §3.6.8), as Cyrus's
// verify_header demands.
func validFieldName(s string) bool {
	return s != "" && len(s) <= 76 && !strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r > '~' || r == ':' })
}

// vacationArgs is what both vacation actions share.
type vacationArgs struct {
	days      int
	addresses []string
	subject   string
	from      string
}

// scriptWriter builds the script: CRLF line ends, two spaces per level.
type scriptWriter struct{ b strings.Builder }

func (w *scriptWriter) line(depth int, s string) {
	w.b.WriteString(strings.Repeat("  ", depth))
	w.b.WriteString(s)
	w.b.WriteString("\r\n")
}

// vacation writes one vacation action (RFC 5230 §4). Never :mime (Cyrus
// sends such a body as a MIME entity verbatim) nor :fcc.
func (w *scriptWriter) vacation(depth int, v vacationArgs, handle, text string) {
	first := "vacation"
	if v.days > 0 {
		first += fmt.Sprintf(" :days %d", v.days)
	}
	// A :handle of its own per audience and period: one reply per sender
	// and absence, not reset by editing the text (RFC 5230 §4.2).
	w.line(depth, first+" :handle "+sieveQuote(handle))
	w.line(depth+1, ":addresses "+sieveList(v.addresses))
	if v.subject != "" {
		w.line(depth+1, ":subject "+sieveQuote(v.subject))
	}
	if v.from != "" {
		w.line(depth+1, ":from "+sieveQuote(v.from))
	}
	w.b.WriteString(strings.Repeat("  ", depth+1))
	w.b.WriteString(sieveTextBlock(text))
	w.line(depth, ";")
}

// comments explains the script to whoever reads it in Cyrus. Nothing the
// user typed goes into a comment.
func (w *scriptWriter) comments(state, start, end, relation, audience string) {
	switch {
	case state == "on":
		w.line(0, "# On, with no end date.")
	case end == "":
		w.line(0, "# Scheduled from "+start+" (UTC), with no end date.")
	case start == "":
		w.line(0, "# Scheduled until "+end+" (UTC, excluded).")
	default:
		w.line(0, "# Scheduled from "+start+" until "+end+" (UTC, end excluded).")
	}
	if relation != "" {
		w.line(0, "# Internal senders: the "+relation+" header, which the")
		w.line(0, "# sidecar's LMTP proxy stamps after removing any copy the sender sent.")
	} else {
		w.line(0, "# Internal senders: the envelope sender's domain is one of the")
		w.line(0, "# organisation's. A sender can forge that (spoofable); the LMTP proxy's")
		w.line(0, "# relation header is the trustworthy test.")
	}
	switch audience {
	case audienceAll:
		w.line(0, "# External senders: all get the external reply.")
	case audienceKnown:
		w.line(0, "# External senders: only those in the user's address book "+knownList+".")
	case audienceNone:
		w.line(0, "# External senders: no reply.")
	}
}
