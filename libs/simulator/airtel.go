package simulator

import (
	"net/http"
	"strconv"
)

func (s *Server) registerAirtel() {
	s.tokenRoute(Airtel, http.MethodPost, "/auth/oauth2/token",
		`Airtel token: JSON {"client_id","client_secret","grant_type":"client_credentials"}`, s.airtelToken)
	s.route(http.MethodGet, "/airtel/protected", "Airtel protected call: Bearer token", s.bearerProtected(Airtel))
}

// airtelToken issues a token; earlier ones stay valid.
func (s *Server) airtelToken(r *http.Request) reply {
	var req struct {
		ClientID     string `json:"client_id"`
		ClientSecret string `json:"client_secret"`
		GrantType    string `json:"grant_type"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return jsonReply(http.StatusBadRequest, oauth2Error{"invalid_request", "The request body is not valid JSON"})
	}
	if rep, ok := checkGrant(req.GrantType); !ok {
		return rep
	}
	if req.ClientID == "" || !s.accept(Airtel, req.ClientID, req.ClientSecret, s.cfg.AirtelClientID, s.cfg.AirtelClientSecret) {
		return withCred(jsonReply(http.StatusUnauthorized, oauth2Error{"invalid_client", "Client authentication failed"}), req.ClientID)
	}
	secs, life := lifetime(s.cfg.AirtelTTL)
	token := newToken()
	return withCred(issue(jsonReply(http.StatusOK, struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   string `json:"expires_in"`
		TokenType   string `json:"token_type"`
	}{token, strconv.FormatInt(secs, 10), "bearer"}), token, life), req.ClientID)
}
