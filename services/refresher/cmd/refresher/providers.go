package main

import (
	"fmt"

	"github.com/tokenbus/tokenbus/services/refresher"
	"github.com/tokenbus/tokenbus/services/refresher/config"
	"github.com/tokenbus/tokenbus/services/refresher/provider/daraja"
)

// buildProvider returns the refresher.Provider for one configured provider.
func buildProvider(p config.Provider) (refresher.Provider, error) {
	switch p.Kind {
	case "daraja":
		return daraja.New(daraja.Config{BaseURL: p.BaseURL, ConsumerKey: p.ConsumerKey, ConsumerSecret: p.ConsumerSecret, Timeout: p.Timeout.D()}), nil
	default:
		return nil, fmt.Errorf("refresher: provider %q: kind %q is not supported yet", p.Name, p.Kind)
	}
}
