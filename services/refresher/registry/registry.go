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
	if sv := r.set.Get(p.Name); sv != nil && sv.Source == wire.SourceConfig {
		return 0, fmt.Errorf("%w: name: %q is a provider of the configuration file; choose another name", refresher.ErrConflict, p.Name)
	}
	if other := r.set.Sharing(p.Name, p.Credential()); other != "" {
		return 0, fmt.Errorf("%w: %s: provider %q uses the same credential; two providers may not share one (for Daraja each would invalidate the other's token)", refresher.ErrConflict, p.CredentialField(), other)
	}
	return r.creds.Put(ctx, p)
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
