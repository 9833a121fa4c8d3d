package tokenclient_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokenbus/tokenbus/libs/tokenclient"
)

// These examples need a running refresher (`go tool task run` starts one on
// nats://127.0.0.1:4222), so they are compiled but not run by go test; the
// tests module runs the same code against a real refresher.

// A service keeps one Client for its lifetime and reads tokens from memory.
func Example() {
	nc, err := nats.Connect("nats://127.0.0.1:4222", nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()

	tc, err := tokenclient.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	defer tc.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tok, err := tc.Token(ctx, "daraja-sandbox")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("token expires in", time.Until(tok.ExpiresAt).Round(time.Second))
}

// Transport makes any HTTP client authenticate with the provider's current
// token, and recover from a rotated token with one retry.
func ExampleClient_Transport() {
	nc, err := nats.Connect("nats://127.0.0.1:4222", nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	tc, err := tokenclient.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	defer tc.Close()

	daraja := &http.Client{
		Transport: tc.Transport("daraja-sandbox", http.DefaultTransport),
		Timeout:   30 * time.Second,
	}
	body := `{"BusinessShortCode":"174379","Amount":"1","PartyA":"254708374149","TransactionType":"CustomerPayBillOnline"}`
	resp, err := daraja.Post("http://127.0.0.1:8090/mpesa/stkpush/v1/processrequest", "application/json", strings.NewReader(body))
	if errors.Is(err, tokenclient.ErrUnavailable) {
		log.Fatal("no valid Daraja token right now: ", err)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status)
}

// Invalidate reports a token the provider rejected, for code that does not
// go through Transport.
func ExampleClient_Invalidate() {
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	tc, err := tokenclient.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	defer tc.Close()

	ctx := context.Background()
	tok, err := tc.Token(ctx, "daraja-sandbox")
	if err != nil {
		log.Fatal(err)
	}
	// ... the provider answered 401 to tok ...
	fresh, err := tc.Invalidate(ctx, "daraja-sandbox", tok.AccessToken)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(fresh.AccessToken != tok.AccessToken)
}

// Errors answered by the refresher match sentinels and carry its message.
func ExampleError() {
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	tc, err := tokenclient.New(nc, tokenclient.WithoutWatch(), tokenclient.WithTimeout(2*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer tc.Close()

	_, err = tc.Token(context.Background(), "daraja-prod")
	var e *tokenclient.Error
	switch {
	case errors.Is(err, tokenclient.ErrUnknownProvider):
		fmt.Println("not configured:", err)
	case errors.As(err, &e):
		fmt.Println("refresher says", e.Code, e.Message)
	}
}

// WithSingleUse declares providers whose tokens may be used once (mPay): each
// Token call takes a token of its own from the refresher's pool.
func ExampleWithSingleUse() {
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	tc, err := tokenclient.New(nc, tokenclient.WithSingleUse("mpay"))
	if err != nil {
		log.Fatal(err)
	}
	defer tc.Close()
	mpay := &http.Client{Transport: tc.Transport("mpay", nil)}
	_ = mpay
}

// WithOnUpdate sees every token as it is published, e.g. to export its
// expiry as a metric.
func ExampleWithOnUpdate() {
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	tc, err := tokenclient.New(nc,
		tokenclient.WithOnUpdate(func(ev tokenclient.Event) {
			fmt.Println(ev.Provider, "revision", ev.Revision, "expires", ev.Token.ExpiresAt)
		}),
		tokenclient.WithErrorHandler(func(err error) { log.Print(err) }),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer tc.Close()
	if err := tc.WaitReady(context.Background()); err != nil {
		log.Fatal(err)
	}
}

// A service allowed one provider only (the reader permissions of SPEC §10:
// publish token.get.P and token.refresh.P, subscribe token.updates.P and
// _INBOX_<user>.>) connects with its own inbox prefix; the Client follows
// token.updates.P, which needs nothing more.
func ExampleWithProviders() {
	nc, err := nats.Connect("nats://127.0.0.1:4222", nats.UserInfo("payments", "…"),
		nats.CustomInboxPrefix("_INBOX_payments"), nats.MaxReconnects(-1))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	tc, err := tokenclient.New(nc, tokenclient.WithProviders("daraja-sandbox"))
	if err != nil {
		log.Fatal(err)
	}
	defer tc.Close()
	if err := tc.WaitReady(context.Background()); err != nil { // the token is in memory
		log.Fatal(err)
	}
}

// WithFollowMode(FollowKVWatch) watches the whole bucket (one JetStream
// consumer per Client): for a few processes that want every provider's token.
func ExampleWithFollowMode() {
	nc, err := nats.Connect("nats://127.0.0.1:4222")
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	tc, err := tokenclient.New(nc, tokenclient.WithFollowMode(tokenclient.FollowKVWatch),
		tokenclient.WithOnUpdate(func(ev tokenclient.Event) { fmt.Println(ev.Provider, ev.Revision) }))
	if err != nil {
		log.Fatal(err)
	}
	defer tc.Close()
}
