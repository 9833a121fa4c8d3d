package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/micro"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
)

// Registry is what the runtime provider endpoints need (SPEC §8): the set of
// providers, config-file and runtime, and the sealed store behind the runtime
// ones. It is implemented by the process wiring.
type Registry interface {
	// Put stores p durably (replacing a runtime provider of that name) and
	// returns its revision; an error wrapping refresher.ErrConflict if the
	// name belongs to a config-file provider.
	Put(ctx context.Context, p config.Provider) (uint64, error)
	// Delete removes the runtime provider name; an error wrapping
	// refresher.ErrUnknownProvider if there is none.
	Delete(ctx context.Context, name string) error
	// List returns at most limit providers named after after, sorted by
	// name, and the name to continue after (empty on the last page).
	List(after string, limit int) ([]wire.ProviderInfo, string)
}

// BatchRegistry is a Registry that also stores many providers in one write
// (registry.Registry on credentials.Store: one JetStream atomic batch, one
// sync to disk for all of them). tokenbus.providers.put_many uses it when
// the Registry has it: errs[i] refuses ps[i] alone, with Put's errors; err
// means the batch was not stored as a whole, and its providers are put one
// by one.
type BatchRegistry interface {
	PutBatch(ctx context.Context, ps []config.Provider) (revs []uint64, errs []error, err error)
}

// Endpoint names of the runtime provider endpoints, as given to Recorder.
const (
	EndpointProvidersPut     = wire.ProvidersPutSubject
	EndpointProvidersDelete  = wire.ProvidersDeleteSubject
	EndpointProvidersList    = wire.ProvidersListSubject
	EndpointProvidersPutMany = wire.ProvidersPutManySubject
)

// putManyWorkers is how many providers of one put_many request are stored
// at once: each store is a JetStream publish awaiting its ack, so the
// acks of a batch overlap instead of queueing one behind the other.
const putManyWorkers = 32

// errRuntimeOff is the 503 answer when no sealing key is configured.
var errRuntimeOff = fmt.Errorf("%w: set credentials.keys in the refresher configuration "+
	"(each key the base64 of 32 random bytes: openssl rand -base64 32) and restart it; see docs/runtime-providers.md", refresher.ErrRuntimeOff)

func (s *Service) addProviders() error {
	for _, ep := range []struct {
		name, subject string
		h             micro.HandlerFunc
	}{
		{"providers-put", wire.ProvidersPutSubject, s.handlePut},
		{"providers-delete", wire.ProvidersDeleteSubject, s.handleDelete},
		{"providers-list", wire.ProvidersListSubject, s.handleList},
		{"providers-put-many", wire.ProvidersPutManySubject, s.handlePutMany},
	} {
		if err := s.svc.AddEndpoint(ep.name, s.inboxOnly(ep.h), micro.WithEndpointSubject(ep.subject),
			micro.WithEndpointMetadata(map[string]string{"subject": ep.subject})); err != nil {
			return fmt.Errorf("rpc: add endpoint %s: %w", ep.name, err)
		}
	}
	return nil
}

// beginAdmin starts a call for a providers endpoint; the provider is filled
// in once the request is read.
func (s *Service) beginAdmin(req micro.Request, endpoint string) call {
	c := call{endpoint: endpoint, start: time.Now()}
	c.ctx, c.span = s.tr.Start(context.Background(), endpoint, spanKindServer)
	return c
}

func (s *Service) handlePut(req micro.Request) {
	c := s.beginAdmin(req, EndpointProvidersPut)
	if s.cfg.Registry == nil {
		s.fail(c, req.Reply(), req, errRuntimeOff)
		return
	}
	if err := s.waitPutTurn(1); err != nil {
		s.fail(c, req.Reply(), req, err)
		return
	}
	p, err := config.ParseProvider(req.Data())
	if err != nil {
		// The messages name fields, never values.
		s.fail(c, req.Reply(), req, fmt.Errorf("%w: %s", refresher.ErrBadRequest, strings.ReplaceAll(err.Error(), "\n", "; ")))
		return
	}
	c.provider = p.Name
	s.async(c, req.Reply(), func(ctx context.Context) ([]byte, error) {
		rev, err := s.cfg.Registry.Put(ctx, p)
		if err != nil {
			return nil, notDone("stored", "put", err)
		}
		return json.Marshal(wire.ProviderPutReply{Name: p.Name, Kind: p.Kind, Revision: rev})
	})
}

// handlePutMany answers tokenbus.providers.put_many: each provider is parsed,
// validated and stored as handlePut would (the same Registry.Put, the same
// codes), and the reply, sent once every store has answered, says per
// provider its revision or its error. Only a request that is not a list of
// providers at all is refused as a whole.
func (s *Service) handlePutMany(req micro.Request) {
	c := s.beginAdmin(req, EndpointProvidersPutMany)
	if s.cfg.Registry == nil {
		s.fail(c, req.Reply(), req, errRuntimeOff)
		return
	}
	var r wire.ProviderPutManyRequest
	dec := json.NewDecoder(bytes.NewReader(req.Data()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil || dec.More() {
		s.fail(c, req.Reply(), req, fmt.Errorf(`%w: providers: tokenbus.providers.put_many takes {"providers":[<provider>, …]}`, refresher.ErrBadRequest))
		return
	}
	if len(r.Providers) == 0 || len(r.Providers) > wire.ProvidersPutManyMax {
		s.fail(c, req.Reply(), req, fmt.Errorf("%w: providers: want 1 to %d providers, got %d", refresher.ErrBadRequest, wire.ProvidersPutManyMax, len(r.Providers)))
		return
	}
	// Parsing and storing are the onboarding's cost: both wait their turn.
	if err := s.waitPutTurn(len(r.Providers)); err != nil {
		s.fail(c, req.Reply(), req, err)
		return
	}
	results := make([]wire.ProviderPutResult, len(r.Providers))
	parsed := make([]config.Provider, len(r.Providers))
	seen := make(map[string]int, len(r.Providers))
	refuse := func(i int, err error) {
		code, msg := Code(results[i].Name, err)
		results[i].Error = &wire.ErrorDetail{Code: code, Message: fmt.Sprintf("providers[%d]: %s", i, msg)}
	}
	for i, raw := range r.Providers {
		results[i].Index = i
		p, err := config.ParseProvider(raw)
		if err != nil {
			if wire.ValidName(p.Name) {
				results[i].Name = p.Name // a name is no secret, and says which
			}
			// The messages name fields, never values.
			refuse(i, fmt.Errorf("%w: %s", refresher.ErrBadRequest, strings.ReplaceAll(err.Error(), "\n", "; ")))
			continue
		}
		results[i].Name, results[i].Kind = p.Name, p.Kind
		if j, dup := seen[p.Name]; dup {
			refuse(i, fmt.Errorf("%w: name: the same as providers[%d]; put each provider once per request", refresher.ErrBadRequest, j))
			continue
		}
		seen[p.Name] = i
		parsed[i] = p
	}
	s.async(c, req.Reply(), func(ctx context.Context) ([]byte, error) {
		stored := func(i int, rev uint64, err error) {
			switch {
			case err == nil:
				results[i].Revision = rev
			case errors.Is(err, refresher.ErrBadRequest), errors.Is(err, refresher.ErrConflict), errors.Is(err, refresher.ErrRuntimeOff):
				refuse(i, err)
			default:
				// The store did not acknowledge it (a timeout, JetStream
				// unavailable): the error names the provider and the
				// cause, never a value.
				results[i].Error = &wire.ErrorDetail{Code: wire.CodeUnavailable,
					Message: fmt.Sprintf("providers[%d]: not stored, put it again: %v", i, err)}
			}
		}
		var todo []int
		for i := range results {
			if results[i].Error == nil {
				todo = append(todo, i)
			}
		}
		if br, ok := s.cfg.Registry.(BatchRegistry); ok && len(todo) > 1 {
			todo = s.putBatch(ctx, br, parsed, todo, stored)
		}
		next := make(chan int)
		var wg sync.WaitGroup
		for range min(putManyWorkers, len(todo)) {
			wg.Go(func() {
				for i := range next {
					rev, err := s.putOne(ctx, parsed[i])
					stored(i, rev, err)
				}
			})
		}
		for _, i := range todo {
			next <- i
		}
		close(next)
		wg.Wait()
		reply := wire.ProviderPutManyReply{Results: results}
		for _, res := range results {
			if res.Error != nil {
				reply.Refused++
			} else {
				reply.Stored++
			}
		}
		return json.Marshal(reply)
	})
}

// putBatch stores the providers parsed[todo[…]] in one write through br
// and tells stored each one's revision or refusal; if the write failed as a
// whole it returns todo, to be put one by one, else nothing.
func (s *Service) putBatch(ctx context.Context, br BatchRegistry, parsed []config.Provider, todo []int, stored func(int, uint64, error)) []int {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	batch := make([]config.Provider, len(todo))
	for k, i := range todo {
		batch[k] = parsed[i]
	}
	revs, errs, err := br.PutBatch(ctx, batch)
	if err != nil {
		s.log.Info("put_many: storing the providers one by one", slog.Int("providers", len(batch)), slog.String("error", err.Error()))
		return todo
	}
	for k, i := range todo {
		stored(i, revs[k], errs[k])
	}
	return nil
}

// putOne stores one provider of a put_many batch within its own timeout (a
// batch waits for the store's acknowledgements one after another, so one
// deadline for the whole batch would fail its tail under load), ending at
// once if the service stops.
func (s *Service) putOne(ctx context.Context, p config.Provider) (uint64, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.Timeout)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	return s.cfg.Registry.Put(ctx, p)
}

func (s *Service) handleDelete(req micro.Request) {
	c := s.beginAdmin(req, EndpointProvidersDelete)
	if s.cfg.Registry == nil {
		s.fail(c, req.Reply(), req, errRuntimeOff)
		return
	}
	var r wire.ProviderDeleteRequest
	if err := json.Unmarshal(req.Data(), &r); err != nil || r.Name == "" {
		s.fail(c, req.Reply(), req, fmt.Errorf(`%w: name: missing; tokenbus.providers.delete takes {"name":"<provider>"}`, refresher.ErrBadRequest))
		return
	}
	if !wire.ValidName(r.Name) {
		s.fail(c, req.Reply(), req, fmt.Errorf("%w: name: want [a-z0-9][a-z0-9-]*, at most 64 characters", refresher.ErrBadRequest))
		return
	}
	c.provider = r.Name
	s.async(c, req.Reply(), func(ctx context.Context) ([]byte, error) {
		if err := s.cfg.Registry.Delete(ctx, r.Name); err != nil {
			if errors.Is(err, refresher.ErrUnknownProvider) {
				return nil, fmt.Errorf("%w: no runtime provider of that name", refresher.ErrUnknownProvider)
			}
			return nil, notDone("deleted", "delete", err)
		}
		return json.Marshal(wire.ProviderDeleteReply{Name: r.Name, Deleted: true})
	})
}

func (s *Service) handleList(req micro.Request) {
	c := s.beginAdmin(req, EndpointProvidersList)
	if s.cfg.Registry == nil {
		s.fail(c, req.Reply(), req, errRuntimeOff)
		return
	}
	var r wire.ProviderListRequest
	if !emptyOrObject(req.Data()) || len(strings.TrimSpace(string(req.Data()))) > 0 && json.Unmarshal(req.Data(), &r) != nil {
		s.fail(c, req.Reply(), req, fmt.Errorf(`%w: tokenbus.providers.list takes an empty body or {"after":"<name>","limit":N}`, refresher.ErrBadRequest))
		return
	}
	if r.Limit < 0 {
		s.fail(c, req.Reply(), req, fmt.Errorf("%w: limit: must be positive (at most %d)", refresher.ErrBadRequest, wire.StatusPageMax))
		return
	}
	if r.Limit == 0 || r.Limit > wire.StatusPageMax {
		r.Limit = wire.StatusPageMax // default and maximum
	}
	items, next := s.cfg.Registry.List(r.After, r.Limit)
	if items == nil {
		items = []wire.ProviderInfo{}
	}
	_ = req.RespondJSON(wire.ProviderListReply{Providers: items, Next: next})
	s.end(c, codeOK)
}

// handleStatus answers token.status: the replica's view, summarised,
// filtered and paged as the request asks, cut further until it fits one
// NATS message.
func (s *Service) handleStatus(req micro.Request) {
	var q wire.StatusRequest
	if !emptyOrObject(req.Data()) || len(strings.TrimSpace(string(req.Data()))) > 0 && json.Unmarshal(req.Data(), &q) != nil {
		body, _ := json.Marshal(wire.ErrorBody{Error: wire.ErrorDetail{Code: wire.CodeBadRequest, Message: `token.status takes an empty body or {"provider":"…"} / {"after":"…","limit":N}`}})
		_ = req.Error(fmt.Sprint(wire.CodeBadRequest), "bad request", body)
		return
	}
	st := s.cfg.Status(q)
	page := st.Providers
	size := max(s.nc.MaxPayload()*9/10, 4096)
	limit := q.Limit
	if limit <= 0 || limit > wire.StatusPageMax {
		limit = wire.StatusPageMax
	}
	for {
		body, err := json.Marshal(st)
		if err == nil && (int64(len(body)) <= size || limit == 1) {
			_ = req.Respond(body)
			return
		}
		// The page with half the limit: its first half, followed by the
		// rest (what asking with that limit would answer).
		limit = max(limit/2, 1)
		if len(page) > limit {
			st.Providers, st.Next = page[:limit], page[limit-1].Name
		}
	}
}

// storeError is a put or delete the credential store did not acknowledge (a
// timeout, JetStream unavailable): Code answers 503 naming the provider, what
// was not done and the cause, never a value.
type storeError struct {
	done, again string
	err         error
}

func (e *storeError) Error() string {
	return fmt.Sprintf("not %s, %s it again: %v", e.done, e.again, e.err)
}

func (e *storeError) Unwrap() error { return e.err }

// notDone marks err as a store failure unless it is a refusal Code already
// answers (a bad request, a conflict, runtime providers off).
func notDone(done, again string, err error) error {
	for _, known := range []error{refresher.ErrBadRequest, refresher.ErrConflict, refresher.ErrRuntimeOff, refresher.ErrUnknownProvider} {
		if errors.Is(err, known) {
			return err
		}
	}
	return &storeError{done: done, again: again, err: err}
}
