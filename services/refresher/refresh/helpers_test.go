package refresh

import (
	"time"

	"github.com/tokenbus/tokenbus/libs/tokenclient/wire"
)

func tokenAt(v string, now time.Time) wire.Token {
	return wire.Token{Provider: "p", AccessToken: v, TokenType: "Bearer", IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
}
