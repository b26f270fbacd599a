package store

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/unicode/norm"
)

// Limits on addresses, from RFC 5321 §4.5.3.1: a local part of at most 64
// octets, a domain of at most 255 (253 without the root dot) and a path of at
// most 256 including the angle brackets, so 254 for the address itself.
const (
	MaxLocal   = 64
	MaxDomain  = 253
	MaxAddress = 254
	// maxInput bounds what is looked at before any parsing: a recipient with
	// a long +detail may exceed MaxAddress until the detail is stripped.
	maxInput = 320
)

// ErrMalformed is returned for addresses, logins and domain names that can
// never name a mailbox: empty, too long, control bytes, bad UTF-8, characters
// that would need quoting.
var ErrMalformed = errors.New("malformed")

// Address is a canonical mailbox address: lower-case ASCII letters, domain in
// its ASCII (A-label) form, +detail removed. Only a Canon makes one, so a
// value of this type has always been through the one canonicalisation.
type Address struct {
	local, domain, detail string
}

// Local is the part before the @, without any +detail.
func (a Address) Local() string { return a.local }

// Domain is the domain, never empty.
func (a Address) Domain() string { return a.domain }

// Detail is the sub-address that followed the separator in a recipient
// (RFC 5233), without the separator; "" when there was none.
func (a Address) Detail() string { return a.detail }

// String is local@domain, the form stored and compared.
func (a Address) String() string {
	if a.local == "" {
		return ""
	}
	return a.local + "@" + a.domain
}

// IsZero reports whether a is the zero Address.
func (a Address) IsZero() bool { return a.local == "" }

// Canon is the one canonicalisation of addresses and logins shared by every
// service and the admin commands. It must agree with Cyrus (virtdomains:
// userid, username_tolower, lmtp_downcase_rcpt): Cyrus lower-cases with the C
// library's ASCII tolower, splits the user id at the last '@' and treats a
// missing domain as its defaultdomain.
type Canon struct {
	defaultDomain string
	separators    string
}

// NewCanon returns a Canon with Cyrus's defaultdomain (may be empty: then a
// bare local part is malformed) and the sub-address separator characters
// ("+", as Cyrus lmtpd uses; "" turns detail stripping off).
func NewCanon(defaultDomain, separators string) (Canon, error) {
	c := Canon{separators: separators}
	if defaultDomain != "" {
		d, err := c.Domain(defaultDomain)
		if err != nil {
			return Canon{}, fmt.Errorf("default domain: %w", err)
		}
		c.defaultDomain = d
	}
	// Cyrus lmtpd splits sub-addresses at '+' only; any other separator
	// would make us deliver where Cyrus would not.
	if separators != "" && separators != "+" {
		return Canon{}, malformed("detail separator %q: Cyrus only knows \"+\" (or \"\" for none)", separators)
	}
	return c, nil
}

// DefaultDomain is the canonical default domain, or "".
func (c Canon) DefaultDomain() string { return c.defaultDomain }

// Address canonicalises a recipient or directory address: split at the last
// '@', default domain when none, lower-case, +detail split off.
func (c Canon) Address(s string) (Address, error) {
	return c.canonical(s, "", recipient)
}

// Login canonicalises what a saslauthd client sends: Cyrus has already split
// the user id at the last '@' into login and realm, and sends its
// defaultdomain as an empty realm. A login keeps any separator: logging in as
// "alice+x" must not open alice's mailbox.
func (c Canon) Login(login, realm string) (Address, error) {
	if realm != "" && strings.Contains(login, "@") {
		// The client splits at the last '@'; a second one means the user id
		// held two, which names no mailbox.
		return Address{}, malformed("login with '@' and a realm")
	}
	return c.canonical(login, realm, loginName)
}

// Exact canonicalises an address without splitting off a +detail and with
// RFC 5322's characters rather than Cyrus's: for alias targets and
// catch-alls, which may live on other systems and name a sub-address.
func (c Canon) Exact(s string) (Address, error) {
	return c.canonical(s, "", target)
}

// mode is what an address is being canonicalised for.
type mode int

const (
	recipient mode = iota // a mailbox address: +detail split off
	loginName             // a saslauthd login: kept whole
	target                // an alias target or catch-all: anywhere, +detail kept
)

// canonical is the single implementation behind Address, Login and Exact.
// Recipients and logins also follow Cyrus's rules for user names; targets
// may live on other systems and only follow RFC 5322.
func (c Canon) canonical(s, realm string, m mode) (Address, error) {
	if len(s) > maxInput || len(realm) > maxInput {
		return Address{}, malformed("address longer than %d bytes", maxInput)
	}
	local, domain := s, realm
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		local, domain = s[:i], s[i+1:]
		if domain == "" {
			return Address{}, malformed("address %q ends in '@'", trunc(s))
		}
	}
	if domain == "" {
		if c.defaultDomain == "" {
			return Address{}, malformed("address %q has no domain and no default domain is set", trunc(s))
		}
		domain = c.defaultDomain
	} else {
		d, err := c.Domain(domain)
		if err != nil {
			return Address{}, err
		}
		domain = d
	}
	if err := checkLocal(local, m != target); err != nil {
		return Address{}, err
	}
	// Cyrus (mbname_from_recipient) splits at the first separator and
	// lower-cases the user part only: the detail names a folder, and
	// folder names keep their case.
	var detail string
	switch i := strings.IndexAny(local, c.separators); {
	case c.separators == "" || i <= 0 || m == loginName:
		// Cyrus lower-cases a whole login (username_tolower). A separator
		// in first position leaves no user name: the local part stays
		// whole rather than naming the empty user.
		local = lowerASCII(local)
	case m == recipient:
		local, detail = lowerASCII(local[:i]), local[i+1:]
		if strings.HasSuffix(local, ".") {
			// "a.+x": the user part alone must still be a Dot-string.
			return Address{}, malformed("local part %q ends in '.'", trunc(local))
		}
	default: // target: the sub-address stays, with its case
		local = lowerASCII(local[:i]) + local[i:]
	}
	if len(local) > MaxLocal {
		return Address{}, malformed("local part longer than %d bytes", MaxLocal)
	}
	if len(local)+1+len(domain) > MaxAddress {
		return Address{}, malformed("address longer than %d bytes", MaxAddress)
	}
	return Address{local: local, domain: domain, detail: detail}, nil
}

// Domain canonicalises a domain name: lower-case, internationalised names in
// A-label form (RFC 5890), LDH labels of 1 to 63 octets.
func (c Canon) Domain(s string) (string, error) {
	if s == "" || len(s) > maxInput {
		return "", malformed("domain %q: empty or too long", trunc(s))
	}
	d := s
	if !isASCII(s) {
		if !utf8.ValidString(s) {
			return "", malformed("domain: invalid UTF-8")
		}
		a, err := idna.Lookup.ToASCII(s)
		if err != nil {
			return "", malformed("domain %q: %v", s, err)
		}
		d = a
	}
	d = lowerASCII(d)
	if len(d) > MaxDomain {
		return "", malformed("domain longer than %d bytes", MaxDomain)
	}
	for label := range strings.SplitSeq(d, ".") {
		if err := checkLabel(label); err != nil {
			return "", fmt.Errorf("domain %q: %w", trunc(s), err)
		}
	}
	return d, nil
}

// checkLabel enforces the LDH rule (RFC 1035 §2.3.1, RFC 5890 §2.3.1).
func checkLabel(l string) error {
	if l == "" || len(l) > 63 {
		return malformed("label must be 1 to 63 characters")
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return malformed("label %q starts or ends with '-'", l)
	}
	for i := 0; i < len(l); i++ {
		b := l[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-') {
			return malformed("character %q not allowed in a domain", b)
		}
	}
	return nil
}

// cyrusPunct is the ASCII punctuation Cyrus 3.6 allows in a user name
// (mboxname_policycheck's GOODCHARS, intersected with RFC 5322 atext; '.'
// becomes '^' inside Cyrus with unixhierarchysep). Others, such as '%' (a
// domain separator to Cyrus's canonify_userid), '!', '&', '*', '/', '?',
// '{', '|', '}', '`' and '^', name no mailbox.
const cyrusPunct = "#$'+-=_~."

// checkLocal accepts an RFC 5321 Dot-string of atext plus UTF-8 (RFC 6531),
// and nothing that would need quoting: no quoted local parts, which no Cyrus
// mailbox name can hold anyway. strict narrows ASCII punctuation to what
// Cyrus accepts in a user name. Non-ASCII must be NFC and printable, so that
// two spellings of one name cannot become two users.
func checkLocal(l string, strict bool) error {
	if l == "" {
		return malformed("empty local part")
	}
	if !utf8.ValidString(l) {
		return malformed("local part: invalid UTF-8")
	}
	if l[0] == '.' || l[len(l)-1] == '.' || strings.Contains(l, "..") {
		return malformed("local part %q: dots must separate words", trunc(l))
	}
	ascii := true
	for i := 0; i < len(l); i++ {
		b := l[i]
		switch {
		case b >= utf8.RuneSelf:
			ascii = false
		case b < 0x20 || b == 0x7f:
			return malformed("control byte 0x%02x in address", b)
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		case strict && strings.IndexByte(cyrusPunct, b) >= 0, !strict && (b == '.' || isAtext(b)):
		default:
			return malformed("character %q not allowed in a mailbox address", b)
		}
	}
	if ascii {
		return nil
	}
	for _, r := range l {
		if r >= utf8.RuneSelf && (!unicode.IsGraphic(r) || unicode.IsSpace(r) || unicode.Is(unicode.Cf, r)) {
			return malformed("character %U not allowed in an address", r)
		}
	}
	if !norm.NFC.IsNormalString(l) {
		return malformed("local part %q is not in Unicode normal form C", trunc(l))
	}
	return nil
}

// isAtext reports RFC 5322 §3.2.3 atext for ASCII.
func isAtext(b byte) bool {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", b) >= 0
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// lowerASCII lower-cases A-Z only, as Cyrus's lcase() does; non-ASCII bytes
// are left alone so that a UTF-8 local part keeps its identity.
func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b >= 'A' && b <= 'Z' {
			buf := []byte(s)
			for j := i; j < len(buf); j++ {
				if c := buf[j]; c >= 'A' && c <= 'Z' {
					buf[j] = c + 'a' - 'A'
				}
			}
			return string(buf)
		}
	}
	return s
}

// trunc keeps error messages short when the input is long or hostile.
func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// malformedError is an ErrMalformed whose text is only the reason, so that
// messages read "... is not a valid address: character ' ' not allowed"
// rather than ending in the sentinel's word.
type malformedError struct{ msg string }

func (e *malformedError) Error() string        { return e.msg }
func (e *malformedError) Is(target error) bool { return target == ErrMalformed }

func malformed(format string, args ...any) error {
	return &malformedError{fmt.Sprintf(format, args...)}
}
