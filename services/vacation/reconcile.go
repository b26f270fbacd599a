package vacation

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"cyrus-sidecar/services/listen"
	"cyrus-sidecar/services/vacation/managesieve"
	"cyrus-sidecar/store"
)

// apply brings one address in step and records the outcome.
func (s *Service) apply(ctx context.Context, cfg *Config, j job) {
	st := j.state
	st.Address = j.address
	st.AttemptedAt = s.now().UTC()
	var err error
	action := "install"
	if j.want != nil {
		err = s.install(ctx, cfg, j.want, &st)
	} else {
		action = "remove"
		err = s.remove(ctx, cfg, &st)
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	jobResults.WithLabelValues(action, result).Inc()
	if err != nil {
		st.LastError = err.Error()
		s.failed(cfg, j.address)
		s.log.Warn("vacation not in step with Cyrus; will retry", "address", j.address, "err", err)
	} else {
		s.succeeded(j.address)
	}
	if j.want == nil && err == nil {
		if err := s.st.DeleteSieveState(ctx, j.address); err != nil {
			s.log.Error("recording sieve state", "address", j.address, "err", err)
		}
		return
	}
	if err := s.st.SetSieveState(ctx, st); err != nil {
		s.log.Error("recording sieve state", "address", j.address, "err", err)
	}
}

// session opens a ManageSieve session acting for address.
func (s *Service) session(ctx context.Context, cfg *Config, address string) (_ *managesieve.Client, err error) {
	start := time.Now()
	defer func() { listen.ObserveCyrus("vacation", "login", start, err) }()
	password, err := s.cy.Password()
	if err != nil {
		return nil, fmt.Errorf("admin password: %w", err)
	}
	cl, err := managesieve.Dial(ctx, s.cy.Network, s.cy.Addr, managesieve.Options{Timeout: cfg.Timeout})
	if err != nil {
		return nil, fmt.Errorf("managesieve %s: %w", s.cy.Addr, err)
	}
	// RFC 4616: the admin authenticates, the user is who it acts as.
	if err := cl.AuthenticatePlain(address, s.cy.Admin, password); err != nil {
		cl.Close()
		return nil, fmt.Errorf("managesieve login as %s for %s: %w", s.cy.Admin, address, err)
	}
	s.mu.Lock()
	s.exts = cl.Capabilities().Sieve
	s.mu.Unlock()
	return cl, nil
}

// install puts our script in and makes sure it runs: through our wrapper
// when the user has no active script, else as the policy says. There is
// never a moment without an active script for a user who had one:
// PUTSCRIPT under an active name replaces it atomically (RFC 5804 §2.6).
func (s *Service) install(ctx context.Context, cfg *Config, v *store.Vacation, st *store.SieveState) error {
	cl, err := s.session(ctx, cfg, v.Address)
	if err != nil {
		return err
	}
	defer cl.Logout()
	script, err := s.render(ctx, v, cl.Capabilities().Sieve)
	if err != nil {
		return err
	}
	scripts, err := cl.ListScripts()
	if err != nil {
		return err
	}
	act := activeScript(scripts)
	// Activation first, our script after: the includes are :optional, and
	// Cyrus refuses any PUTSCRIPT, a replacement too, once the user has
	// sieve_maxscripts scripts, so the user's script is edited while ours
	// is not yet counted.
	st.LastError = ""
	switch {
	case act == cfg.WrapperName:
		// Ours already; its content names the user's script, if any.
		if err := putScript(cl, scripts, cfg.WrapperName, wrapperScript(cfg.ScriptName, st.PrevActive)); err != nil {
			return err
		}
		st.Mode = "wrapper"
	case act == "" || cfg.Policy == "wrap":
		if err := putScript(cl, scripts, cfg.WrapperName, wrapperScript(cfg.ScriptName, act)); err != nil {
			return err
		}
		if err := cl.SetActive(cfg.WrapperName); err != nil {
			return err
		}
		st.Mode, st.PrevActive = "wrapper", act
	case cfg.Policy == "include":
		body, err := cl.GetScript(act)
		if err != nil {
			return err
		}
		if withInclude, changed := addInclude(body, cfg.ScriptName); changed {
			if err := cl.PutScript(act, withInclude); err != nil {
				return fmt.Errorf("adding the include to %s: %w", act, err)
			}
		}
		st.Mode, st.PrevActive = "include", act
	default: // report
		st.Mode, st.PrevActive = "report", act
		st.LastError = fmt.Sprintf("the user's own script %q is active and policy is \"report\": the out-of-office is installed but not activated", act)
	}
	if err := putScript(cl, scripts, cfg.ScriptName, script); err != nil {
		return err
	}
	st.ScriptHash = scriptHash(cfg, script)
	st.InstalledAt = s.now().UTC()
	return nil
}

// remove undoes install: the user's own script active again as it was,
// our lines out of it, our scripts deleted.
func (s *Service) remove(ctx context.Context, cfg *Config, st *store.SieveState) error {
	cl, err := s.session(ctx, cfg, st.Address)
	if err != nil {
		return err
	}
	defer cl.Logout()
	scripts, err := cl.ListScripts()
	if err != nil {
		return err
	}
	act := activeScript(scripts)
	has := func(name string) bool {
		return slices.ContainsFunc(scripts, func(sc managesieve.Script) bool { return sc.Name == name })
	}
	if act == cfg.WrapperName {
		// Back to what was active before (or none, as before).
		prev := st.PrevActive
		if !has(prev) {
			prev = ""
		}
		if err := cl.SetActive(prev); err != nil {
			return err
		}
	}
	// Ours first: with sieve_maxscripts reached Cyrus would refuse the
	// edited user script (the include is :optional meanwhile).
	for _, name := range []string{cfg.WrapperName, cfg.ScriptName} {
		if !has(name) {
			continue
		}
		if err := cl.DeleteScript(name); err != nil && !nonexistent(err) {
			return err
		}
	}
	// Our include lines, wherever the user's active script now is.
	for _, name := range []string{st.PrevActive, act} {
		if name == "" || name == cfg.WrapperName || name == cfg.ScriptName || !has(name) {
			continue
		}
		body, err := cl.GetScript(name)
		if err != nil {
			return err
		}
		if clean := removeInclude(body); clean != body {
			if err := cl.PutScript(name, clean); err != nil {
				return fmt.Errorf("removing the include from %s: %w", name, err)
			}
		}
	}
	*st = store.SieveState{Address: st.Address, AttemptedAt: st.AttemptedAt}
	return nil
}

// putScript stores a script, unless it is there already with that content.
// Cyrus 3.6 counts a user's scripts before it looks at the name, so with
// sieve_maxscripts (5) reached even replacing one is refused: our own
// script, never the active one itself, is then deleted and stored again
// (the include that names it is :optional meanwhile).
func putScript(cl *managesieve.Client, scripts []managesieve.Script, name, content string) error {
	exists := slices.ContainsFunc(scripts, func(sc managesieve.Script) bool { return sc.Name == name })
	if exists {
		if cur, err := cl.GetScript(name); err == nil && cur == content {
			return nil
		}
	}
	err := cl.PutScript(name, content)
	var me *managesieve.Error
	if err != nil && exists && errors.As(err, &me) && me.Code == "QUOTA/MAXSCRIPTS" &&
		!slices.ContainsFunc(scripts, func(sc managesieve.Script) bool { return sc.Name == name && sc.Active }) {
		if err := cl.DeleteScript(name); err != nil {
			return err
		}
		return cl.PutScript(name, content)
	}
	return err
}

func activeScript(scripts []managesieve.Script) string {
	for _, sc := range scripts {
		if sc.Active {
			return sc.Name
		}
	}
	return ""
}

func nonexistent(err error) bool {
	var me *managesieve.Error
	return errors.As(err, &me) && me.Code == "NONEXISTENT"
}

// render builds the user's script from the store with the given
// extensions.
func (s *Service) render(ctx context.Context, v *store.Vacation, exts []string) (string, error) {
	a, err := s.canon.Address(v.Address)
	if err != nil {
		return "", err
	}
	addrs, err := s.st.AddressesOf(ctx, s.canon, a)
	if err != nil {
		return "", err
	}
	domains, err := s.st.OrgDomains(ctx, a)
	if err != nil {
		return "", err
	}
	return Render(Input{
		Settings: Settings{State: v.State, Start: v.Start, End: v.End, Subject: v.Subject,
			InternalText: v.InternalText, ExternalText: v.ExternalText, Audience: v.Audience, Days: v.Days, From: v.From},
		User: v.Address, Addresses: addrs, OrgDomains: domains, RelationHeader: s.cy.Relation,
		Period: v.Period, Extensions: exts,
	})
}
