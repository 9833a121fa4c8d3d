package config_test

import (
	"fmt"

	"github.com/tokenbus/tokenbus/services/refresher/config"
)

func ExampleParse() {
	env := map[string]string{"MPESA_CONSUMER_KEY": "key", "MPESA_CONSUMER_SECRET": "secret"}
	lookup := func(name string) (string, bool) { v, ok := env[name]; return v, ok }

	c, err := config.Parse([]byte(`
providers:
  - name: daraja-sandbox
    kind: daraja
    base_url: https://sandbox.safaricom.co.ke
    consumer_key: ${MPESA_CONSUMER_KEY}
    consumer_secret: ${MPESA_CONSUMER_SECRET}
`), lookup)
	if err != nil {
		fmt.Println(err)
		return
	}
	p := c.Providers[0]
	fmt.Println(p.Name, p.ConsumerKey, p.ConsumerSecret, p.Timeout, c.Lease.TTL, c.Bucket)

	_, err = config.Parse([]byte(`
providers:
  - name: daraja-sandbox
    kind: daraja
    consumer_key: ${MPESA_CONSUMER_KEY}
    consumer_secret: ${MPESA_CONSUMER_SECRET}
    pool: 4
  - name: mpay
    kind: mpay
    password: ${MPAY_PASSWORD}
`), lookup)
	fmt.Println(err)
	// Output:
	// daraja-sandbox key [redacted] 10s 10s tokens
	// config: line 7: providers[0] (daraja-sandbox): field "pool" does not apply to kind daraja; it is for mpay
	// config: line 10: providers[1] (mpay).password: environment variable MPAY_PASSWORD is not set
}
