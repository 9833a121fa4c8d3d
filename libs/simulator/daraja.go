package simulator

import (
	"net/http"
	"strconv"
)

// darajaError is Daraja's error body.
type darajaError struct {
	RequestID    string `json:"requestId"`
	ErrorCode    string `json:"errorCode"`
	ErrorMessage string `json:"errorMessage"`
}

func darajaFailure(status int, code, message string) reply {
	return jsonReply(status, darajaError{RequestID: requestID(), ErrorCode: code, ErrorMessage: message})
}

func (s *Server) registerDaraja() {
	s.tokenRoute(Daraja, http.MethodGet, "/oauth/v1/generate",
		"Daraja token: ?grant_type=client_credentials, HTTP Basic consumer key and secret", s.darajaToken)
	s.route(http.MethodPost, "/mpesa/stkpush/v1/processrequest",
		"Daraja protected call (STK push): Bearer token", s.darajaProtected)
}

// darajaToken issues a token that replaces the previous one.
func (s *Server) darajaToken(r *http.Request) reply {
	if r.URL.Query().Get("grant_type") != "client_credentials" {
		return darajaFailure(http.StatusBadRequest, "400.008.02", "Invalid grant type passed")
	}
	key, secret, ok := r.BasicAuth()
	if !ok {
		return darajaFailure(http.StatusBadRequest, "400.008.01", "Invalid Authentication passed")
	}
	if !s.accept(Daraja, key, secret, s.cfg.DarajaKey, s.cfg.DarajaSecret) {
		return withCred(newReply(http.StatusBadRequest, "", nil), key) // Daraja's answer to bad credentials: no body at all
	}
	secs, life := lifetime(s.cfg.DarajaTTL)
	var expiresIn any = strconv.FormatInt(secs, 10)
	if s.cfg.DarajaExpiresInNumber {
		expiresIn = secs
	}
	token := newToken()
	return withCred(issue(jsonReply(http.StatusOK, struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   any    `json:"expires_in"`
	}{token, expiresIn}), token, life), key)
}

func (s *Server) darajaProtected(w http.ResponseWriter, r *http.Request) {
	if !s.use(Daraja, bearer(r)) {
		darajaFailure(http.StatusUnauthorized, "404.001.03", "Invalid Access Token").write(w)
		return
	}
	jsonReply(http.StatusOK, map[string]string{
		"ResponseCode":        "0",
		"ResponseDescription": "Success. Request accepted for processing",
	}).write(w)
}
