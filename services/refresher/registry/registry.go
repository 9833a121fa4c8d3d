package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/credentials"
	"github.com/tokenbus/tokenbus/services/refresher/rpc"
)

// CredentialStore is what Registry needs of the credential bucket
// (credentials.Store): storing a runtime provider and removing one, which
// answers credentials.ErrNotFound when there is none of that name.
type CredentialStore interface {
	Put(ctx context.Context, p config.Provider) (uint64, error)
	Delete(ctx context.Context, name string) error
}

var _ CredentialStore = (*credentials.Store)(nil)

// Registry implements rpc.Registry on the credential store and the
// providers this replica serves.
type Registry struct {
	set   *Set
	creds CredentialStore
}

var _ rpc.Registry = Registry{}

// NewRegistry returns the rpc.Registry that stores runtime providers in
// creds, checked against the providers of set.
func NewRegistry(set *Set, creds CredentialStore) Registry {
	return Registry{set: set, creds: creds}
}

// Put stores p in the credential bucket; every replica then serves it from
// its watch, and the lease holder fetches its token.
func (r Registry) Put(ctx context.Context, p config.Provider) (uint64, error) {
	if err := r.check(p); err != nil {
		return 0, err
	}
	return r.creds.Put(ctx, p)
}

// check refuses p if its name is a config-file provider's, or its
// credential another provider's.
func (r Registry) check(p config.Provider) error {
	if sv := r.set.Get(p.Name); sv != nil && sv.Source == wire.SourceConfig {
		return fmt.Errorf("%w: name: %q is a provider of the configuration file; choose another name", refresher.ErrConflict, p.Name)
	}
	if other := r.set.Sharing(p.Name, p.Credential()); other != "" {
		return fmt.Errorf("%w: %s: provider %q uses the same credential; two providers may not share one (for Daraja each would invalidate the other's token)", refresher.ErrConflict, p.CredentialField(), other)
	}
	return nil
}

// BatchStore is a CredentialStore that also stores many providers in one
// write (credentials.Store: one JetStream atomic batch).
type BatchStore interface {
	PutBatch(ctx context.Context, ps []config.Provider) (revs []uint64, errs []error, err error)
}

var _ BatchStore = (*credentials.Store)(nil)

// PutBatch stores ps as Put stores each, in one write when the credential
// store takes batches (rpc.BatchRegistry): errs[i] refuses ps[i] alone (as
// Put would, or for sharing a credential with an earlier provider of ps),
// err says the batch was not stored as a whole (the caller puts them one by
// one).
func (r Registry) PutBatch(ctx context.Context, ps []config.Provider) (revs []uint64, errs []error, err error) {
	bs, ok := r.creds.(BatchStore)
	if !ok {
		return nil, nil, credentials.ErrNoBatch
	}
	errs = make([]error, len(ps))
	var (
		batch []config.Provider
		at    []int
		cred  = make(map[string]int, len(ps))
	)
	for i, p := range ps {
		if err := r.check(p); err != nil {
			errs[i] = err
			continue
		}
		if c := p.Credential(); c != "" {
			if j, dup := cred[c]; dup {
				errs[i] = fmt.Errorf("%w: %s: provider %q of this request uses the same credential; two providers may not share one (for Daraja each would invalidate the other's token)", refresher.ErrConflict, p.CredentialField(), ps[j].Name)
				continue
			}
			cred[c] = i
		}
		batch, at = append(batch, p), append(at, i)
	}
	revs = make([]uint64, len(ps))
	if len(batch) == 0 {
		return revs, errs, nil
	}
	brevs, berrs, err := bs.PutBatch(ctx, batch)
	if err != nil {
		return nil, nil, err
	}
	for k, i := range at {
		revs[i], errs[i] = brevs[k], berrs[k]
	}
	return revs, errs, nil
}

// Delete removes the runtime provider name from the credential bucket.
func (r Registry) Delete(ctx context.Context, name string) error {
	if sv := r.set.Get(name); sv != nil && sv.Source == wire.SourceConfig {
		return refresher.ErrUnknownProvider
	}
	err := r.creds.Delete(ctx, name)
	if errors.Is(err, credentials.ErrNotFound) {
		return refresher.ErrUnknownProvider
	}
	return err
}

// List pages every provider by name.
func (r Registry) List(after string, limit int) ([]wire.ProviderInfo, string) {
	return r.set.List(after, limit)
}
