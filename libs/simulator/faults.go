package simulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"
)

// The Faults.Malformed modes. Each answers 200 in place of a token that would
// have been issued, and issues none.
const (
	// MalformedHTML answers a text/html page, as a captive portal or a
	// misrouted gateway would.
	MalformedHTML = "html"
	// MalformedNoToken answers the success JSON without its token field.
	MalformedNoToken = "no_token"
	// MalformedBadExpires answers the success JSON with expires_in "abc"
	// and a token that is not valid. mPay sends no expires_in, so for mPay
	// it is the same as MalformedNoToken.
	MalformedBadExpires = "bad_expires"
	// MalformedGarbage answers bytes that are not JSON, labelled
	// application/json.
	MalformedGarbage = "garbage"
	// MalformedHuge answers the success JSON padded to exactly 2 MiB by a
	// token that is not valid.
	MalformedHuge = "huge"
)

// HugeSize is the size of a MalformedHuge answer.
const HugeSize = 2 << 20

// Faults are injected into one kind's token requests; protected calls are
// never faulted. A request first waits Latency; then Outage, or failing the
// ErrorRate draw, answers 503; then Malformed replaces a token answer. The
// zero value injects nothing.
//
// In JSON (the admin API) the fields are error_rate, latency (a Go duration
// string such as "200ms"), outage and malformed.
type Faults struct {
	// ErrorRate is the fraction, in [0, 1], of token requests answered 503.
	ErrorRate float64
	// Latency is added before answering a token request. If the request's
	// context ends first, it is answered 503 at once.
	Latency time.Duration
	// Outage answers every token request 503: for Daraja with an HTML page,
	// as its gateway does; for mPay with its JSON failure body; for OAuth2
	// and Airtel with an RFC 6749 temporarily_unavailable error.
	Outage bool
	// Malformed, if not empty, is one of the Malformed modes.
	Malformed string
}

// Validate reports whether f is in range and names a known Malformed mode.
// An unknown mode acts as MalformedGarbage.
func (f Faults) Validate() error {
	var errs []error
	if math.IsNaN(f.ErrorRate) || f.ErrorRate < 0 || f.ErrorRate > 1 {
		errs = append(errs, fmt.Errorf("simulator: error rate %v is not in [0, 1]", f.ErrorRate))
	}
	if f.Latency < 0 {
		errs = append(errs, fmt.Errorf("simulator: latency %v is negative", f.Latency))
	}
	switch f.Malformed {
	case "", MalformedHTML, MalformedNoToken, MalformedBadExpires, MalformedGarbage, MalformedHuge:
	default:
		errs = append(errs, fmt.Errorf("simulator: unknown malformed mode %q", f.Malformed))
	}
	return errors.Join(errs...)
}

type faultsJSON struct {
	ErrorRate float64 `json:"error_rate"`
	Latency   string  `json:"latency"`
	Outage    bool    `json:"outage"`
	Malformed string  `json:"malformed"`
}

// MarshalJSON encodes f with snake_case names and Latency as a duration string.
func (f Faults) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultsJSON{f.ErrorRate, f.Latency.String(), f.Outage, f.Malformed})
}

// UnmarshalJSON decodes what MarshalJSON encodes. A missing field is zero; an
// unknown one is an error, so that a misspelt fault is not silently ignored.
func (f *Faults) UnmarshalJSON(b []byte) error {
	var j faultsJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("simulator: faults: %w", err)
	}
	var lat time.Duration
	if j.Latency != "" {
		var err error
		if lat, err = time.ParseDuration(j.Latency); err != nil {
			return fmt.Errorf("simulator: latency: %w", err)
		}
	}
	*f = Faults{ErrorRate: j.ErrorRate, Latency: lat, Outage: j.Outage, Malformed: j.Malformed}
	return nil
}

const gatewayPage = `<html>
<head><title>503 Service Temporarily Unavailable</title></head>
<body>
<center><h1>503 Service Temporarily Unavailable</h1></center>
<hr><center>nginx</center>
</body>
</html>
`

const portalPage = `<!DOCTYPE html>
<html><head><title>Scheduled maintenance</title></head>
<body><h1>We'll be back soon</h1><p>The API is undergoing scheduled maintenance.</p></body>
</html>
`

// unavailable is kind k's 503 answer.
func unavailable(k Kind) reply {
	switch k {
	case Daraja:
		return newReply(http.StatusServiceUnavailable, "text/html", []byte(gatewayPage))
	case MPay:
		return jsonReply(http.StatusServiceUnavailable, mpayAuth{Description: "Service unavailable"})
	default:
		return jsonReply(http.StatusServiceUnavailable, oauth2Error{
			Error: "temporarily_unavailable", Description: "The service is temporarily unavailable",
		})
	}
}

// malformed returns the answer of mode in place of ok, a JSON success whose
// token is in tokenField.
func malformed(mode string, ok reply, tokenField string) reply {
	switch mode {
	case MalformedHTML:
		return newReply(http.StatusOK, "text/html; charset=utf-8", []byte(portalPage))
	case MalformedNoToken, MalformedBadExpires, MalformedHuge:
	default:
		return newReply(http.StatusOK, "application/json", []byte("\x00\x1f\x8b\xff<<not json>>{{"))
	}
	var m map[string]any
	if err := json.Unmarshal(ok.body, &m); err != nil {
		panic(fmt.Sprintf("simulator: success body is not a JSON object: %v", err))
	}
	switch _, hasExpiry := m["expires_in"]; {
	case mode == MalformedBadExpires && hasExpiry:
		m["expires_in"] = "abc"
	case mode == MalformedHuge:
		m[tokenField] = ""
		m[tokenField] = strings.Repeat("A", HugeSize-len(jsonReply(0, m).body))
	default:
		delete(m, tokenField)
	}
	return jsonReply(http.StatusOK, m)
}
