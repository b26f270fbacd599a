package store

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
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
// (like Postfix's recipient_delimiter; "" turns detail stripping off).
func NewCanon(defaultDomain, separators string) (Canon, error) {
	c := Canon{separators: separators}
	if defaultDomain != "" {
		d, err := c.Domain(defaultDomain)
		if err != nil {
			return Canon{}, fmt.Errorf("default domain: %w", err)
		}
		c.defaultDomain = d
	}
	for _, r := range separators {
		if r >= utf8.RuneSelf || !isAtext(byte(r)) || r == '.' {
			return Canon{}, fmt.Errorf("detail separator %q: %w: must be ASCII punctuation allowed in a local part", r, ErrMalformed)
		}
	}
	return c, nil
}

// DefaultDomain is the canonical default domain, or "".
func (c Canon) DefaultDomain() string { return c.defaultDomain }

// Address canonicalises a recipient or directory address: split at the last
// '@', default domain when none, lower-case, +detail split off.
func (c Canon) Address(s string) (Address, error) {
	return c.canonical(s, "", true)
}

// Login canonicalises what a saslauthd client sends: Cyrus has already split
// the user id at the last '@' into login and realm, and sends its
// defaultdomain as an empty realm. A login keeps any separator: logging in as
// "alice+x" must not open alice's mailbox.
func (c Canon) Login(login, realm string) (Address, error) {
	if realm != "" && strings.Contains(login, "@") {
		// The client splits at the last '@'; a second one means the user id
		// held two, which names no mailbox.
		return Address{}, fmt.Errorf("login with '@' and a realm: %w", ErrMalformed)
	}
	return c.canonical(login, realm, false)
}

// Exact canonicalises an address without splitting off a +detail: for
// alias targets and other places where the sub-address is meant.
func (c Canon) Exact(s string) (Address, error) {
	return c.canonical(s, "", false)
}

// canonical is the single implementation behind Address and Login.
func (c Canon) canonical(s, realm string, stripDetail bool) (Address, error) {
	if len(s) > maxInput || len(realm) > maxInput {
		return Address{}, fmt.Errorf("address longer than %d bytes: %w", maxInput, ErrMalformed)
	}
	local, domain := s, realm
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		local, domain = s[:i], s[i+1:]
		if domain == "" {
			return Address{}, fmt.Errorf("address %q ends in '@': %w", s, ErrMalformed)
		}
	}
	if domain == "" {
		if c.defaultDomain == "" {
			return Address{}, fmt.Errorf("address %q has no domain and no default domain is set: %w", s, ErrMalformed)
		}
		domain = c.defaultDomain
	} else {
		d, err := c.Domain(domain)
		if err != nil {
			return Address{}, err
		}
		domain = d
	}
	if err := checkLocal(local); err != nil {
		return Address{}, err
	}
	local = lowerASCII(local)
	var detail string
	if stripDetail && c.separators != "" {
		// A separator in first position leaves no user name: keep the local
		// part whole rather than map "+x" to the empty user.
		if i := strings.IndexAny(local, c.separators); i > 0 {
			local, detail = local[:i], local[i+1:]
		}
	}
	if len(local) > MaxLocal {
		return Address{}, fmt.Errorf("local part longer than %d bytes: %w", MaxLocal, ErrMalformed)
	}
	if len(local)+1+len(domain) > MaxAddress {
		return Address{}, fmt.Errorf("address longer than %d bytes: %w", MaxAddress, ErrMalformed)
	}
	return Address{local: local, domain: domain, detail: detail}, nil
}

// Domain canonicalises a domain name: lower-case, internationalised names in
// A-label form (RFC 5890), LDH labels of 1 to 63 octets.
func (c Canon) Domain(s string) (string, error) {
	if s == "" || len(s) > maxInput {
		return "", fmt.Errorf("domain %q: empty or too long: %w", trunc(s), ErrMalformed)
	}
	d := s
	if !isASCII(s) {
		if !utf8.ValidString(s) {
			return "", fmt.Errorf("domain: invalid UTF-8: %w", ErrMalformed)
		}
		a, err := idna.Lookup.ToASCII(s)
		if err != nil {
			return "", fmt.Errorf("domain %q: %v: %w", s, err, ErrMalformed)
		}
		d = a
	}
	d = lowerASCII(d)
	if len(d) > MaxDomain {
		return "", fmt.Errorf("domain longer than %d bytes: %w", MaxDomain, ErrMalformed)
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
		return fmt.Errorf("label must be 1 to 63 characters: %w", ErrMalformed)
	}
	if l[0] == '-' || l[len(l)-1] == '-' {
		return fmt.Errorf("label %q starts or ends with '-': %w", l, ErrMalformed)
	}
	for i := 0; i < len(l); i++ {
		b := l[i]
		if !(b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-') {
			return fmt.Errorf("character %q not allowed in a domain: %w", b, ErrMalformed)
		}
	}
	return nil
}

// checkLocal accepts an RFC 5321 Dot-string of atext, plus UTF-8 (RFC 6531),
// and nothing that would need quoting: no quoted local parts, which no Cyrus
// mailbox name can hold anyway.
func checkLocal(l string) error {
	if l == "" {
		return fmt.Errorf("empty local part: %w", ErrMalformed)
	}
	if !utf8.ValidString(l) {
		return fmt.Errorf("local part: invalid UTF-8: %w", ErrMalformed)
	}
	if l[0] == '.' || l[len(l)-1] == '.' || strings.Contains(l, "..") {
		return fmt.Errorf("local part %q: dots must separate words: %w", trunc(l), ErrMalformed)
	}
	for i := 0; i < len(l); i++ {
		b := l[i]
		if b >= utf8.RuneSelf || b == '.' || isAtext(b) {
			continue
		}
		if b < 0x20 || b == 0x7f {
			return fmt.Errorf("control byte 0x%02x in address: %w", b, ErrMalformed)
		}
		return fmt.Errorf("character %q not allowed in an address: %w", b, ErrMalformed)
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
