package refresh

import (
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func tokenAt(v string, now time.Time) wire.Token {
	return wire.Token{Provider: "p", AccessToken: v, TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
}
