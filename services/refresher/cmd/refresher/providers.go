package main

import (
	"fmt"
	"net/http"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/provider/airtel"
	"github.com/tokenbus/tokenbus/services/refresher/provider/daraja"
	"github.com/tokenbus/tokenbus/services/refresher/provider/mpay"
	"github.com/tokenbus/tokenbus/services/refresher/provider/oauth2"
)

// buildProvider returns the refresher.Provider for one configured provider,
// sending its token requests through transport.
func buildProvider(p config.Provider, transport http.RoundTripper) (refresher.Provider, error) {
	switch p.Kind {
	case config.KindDaraja:
		return daraja.New(daraja.Config{BaseURL: p.BaseURL, ConsumerKey: p.ConsumerKey, ConsumerSecret: p.ConsumerSecret, Timeout: p.Timeout.D(), Transport: transport}), nil
	case config.KindMPay:
		return mpay.New(mpay.Config{BaseURL: p.BaseURL, Username: p.Username, Password: p.Password, Timeout: p.Timeout.D(), Transport: transport}), nil
	case config.KindOAuth2:
		return oauth2.New(oauth2.Config{
			TokenURL: p.TokenURL, ClientID: p.ClientID, ClientSecret: p.ClientSecret,
			AuthStyle: p.AuthStyle, Scopes: p.Scopes, Headers: p.Headers, Timeout: p.Timeout.D(), Transport: transport,
		}), nil
	case config.KindAirtel:
		return airtel.New(airtel.Config{BaseURL: p.BaseURL, ClientID: p.ClientID, ClientSecret: p.ClientSecret, Timeout: p.Timeout.D(), Transport: transport}), nil
	default:
		return nil, fmt.Errorf("provider %q: kind %q is not supported", p.Name, p.Kind)
	}
}

// singleUse reports whether p's tokens are single-use: served from a pool,
// each handed out once, instead of kept fresh in KV.
func singleUse(p config.Provider) bool { return p.Kind == config.KindMPay }
