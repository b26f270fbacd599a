package events

import (
	"context"
	"slices"
	"sync"
)

// MemStateStore is a StateStore in memory, for tests and for running
// without a database. The zero value is ready; it is safe for concurrent
// use.
type MemStateStore struct {
	mu       sync.Mutex
	accounts []string
	states   map[string][]ReconcileState
	saves    int
}

// SetAccounts sets what ReconcileAccounts returns.
func (m *MemStateStore) SetAccounts(accounts ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.accounts = slices.Clone(accounts)
}

// ReconcileAccounts returns the accounts last given to SetAccounts.
func (m *MemStateStore) ReconcileAccounts(context.Context) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.accounts), nil
}

// LoadReconcileState returns a copy of the account's saved state.
func (m *MemStateStore) LoadReconcileState(_ context.Context, account string) ([]ReconcileState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.states[account]), nil
}

// SaveReconcileState replaces the account's state with a copy of states.
func (m *MemStateStore) SaveReconcileState(_ context.Context, account string, states []ReconcileState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.states == nil {
		m.states = make(map[string][]ReconcileState)
	}
	m.states[account] = slices.Clone(states)
	m.saves++
	return nil
}

// Saves returns how many times SaveReconcileState was called.
func (m *MemStateStore) Saves() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.saves
}
