package tokenclient

import (
	"errors"
	"testing"
	"time"
)

func TestOptionsValidate(t *testing.T) {
	bad := map[string]Option{
		"WithTimeout(0)":          WithTimeout(0),
		"WithTimeout(-1s)":        WithTimeout(-time.Second),
		"WithBucket(empty)":       WithBucket(""),
		"WithBucket(dots)":        WithBucket("to.kens"),
		"WithSingleUse(Upper)":    WithSingleUse("ok", "MPay"),
		"WithWatchRetry(0)":       WithWatchRetry(0),
		"WithStatusWait(0)":       WithStatusWait(0),
		"WithErrorHandler(nil)":   WithErrorHandler(nil),
		"WithOnUpdate(nil)":       WithOnUpdate(nil),
		"WithTracerProvider(nil)": WithTracerProvider(nil),
		"WithFollowMode(7)":       WithFollowMode(7),
		"WithProviders(Upper)":    WithProviders("ok", "Daraja"),
	}
	for name, opt := range bad {
		if _, err := newClient(nil, []Option{opt}); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("%s: err = %v, want ErrInvalidOption", name, err)
		}
	}
	if _, err := New(nil); !errors.Is(err, ErrInvalidOption) {
		t.Errorf("New(nil): err = %v, want ErrInvalidOption", err)
	}
	c, err := newClient(nil, []Option{
		WithTimeout(time.Second), WithBucket("my_tokens-2"), WithSingleUse("mpay", "mpay-tz"),
		WithWatchRetry(time.Minute), WithStatusWait(time.Second), WithoutWatch(), nil,
		WithErrorHandler(func(error) {}), WithOnUpdate(func(Event) {}),
		WithFollowMode(FollowKVWatch), WithProviders("a", "b"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.bgCancel()
	o := c.o
	if o.timeout != time.Second || o.bucket != "my_tokens-2" || !o.singleUse["mpay-tz"] || o.watchRetry != time.Minute ||
		o.statusWait != time.Second || o.watch || o.onError == nil || o.onUpdate == nil ||
		o.follow != FollowKVWatch || len(o.providers) != 2 {
		t.Fatalf("options not applied: %+v", o)
	}
	d := defaultOptions()
	if d.timeout != DefaultTimeout || d.bucket != "tokens" || !d.watch || d.statusWait != 300*time.Millisecond ||
		d.follow != FollowUpdates {
		t.Fatalf("defaults: %+v", d)
	}
}
