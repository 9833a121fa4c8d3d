package simulator

import "net/http"

// oauth2Error is an RFC 6749 §5.2 error body.
type oauth2Error struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

// oauth2Token is an RFC 6749 §5.1 success body.
type oauth2Token struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope,omitempty"`
}

func (s *Server) registerOAuth2() {
	const doc = "OAuth2 token: form grant_type=client_credentials, client in HTTP Basic or the form, optional scope"
	s.tokenRoute(OAuth2, http.MethodPost, "/oauth2/token", doc, s.oauth2Token)
	s.tokenRoute(OAuth2, http.MethodPost, "/collection/token/", doc+" (MTN MoMo's path)", s.oauth2Token)
	s.route(http.MethodGet, "/oauth2/protected", "OAuth2 protected call: Bearer token", s.bearerProtected(OAuth2))
}

// oauth2Token issues a token; earlier ones stay valid.
func (s *Server) oauth2Token(r *http.Request) reply {
	if want := s.cfg.OAuth2SubscriptionKey; want != "" {
		// Azure API Management, in front of MoMo, checks the key first.
		switch got := r.Header.Get("Ocp-Apim-Subscription-Key"); {
		case got == "":
			return apimDenied("Access denied due to missing subscription key. " +
				"Make sure to include subscription key when making requests to an API.")
		case !same(got, want):
			return apimDenied("Access denied due to invalid subscription key. " +
				"Make sure to provide a valid key for an active subscription.")
		}
	}
	r.Body = http.MaxBytesReader(nil, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		return jsonReply(http.StatusBadRequest, oauth2Error{"invalid_request", "The request body is not a valid form"})
	}
	if rep, ok := checkGrant(r.PostForm.Get("grant_type")); !ok {
		return rep
	}
	id, secret, basic := r.BasicAuth()
	if !basic {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	if id == "" {
		rep := jsonReply(http.StatusUnauthorized, oauth2Error{"invalid_client", "Client authentication is missing"})
		rep.header.Set("WWW-Authenticate", `Basic realm="simulator"`)
		return rep
	}
	if !s.accept(OAuth2, id, secret, s.cfg.OAuth2ClientID, s.cfg.OAuth2ClientSecret) {
		return withCred(jsonReply(http.StatusInternalServerError, oauth2Error{Error: "login_failed"}), id) // as MTN MoMo answers
	}
	secs, life := lifetime(s.cfg.OAuth2TTL)
	token := newToken()
	return withCred(issue(jsonReply(http.StatusOK, oauth2Token{
		AccessToken: token, TokenType: s.cfg.OAuth2TokenType, ExpiresIn: secs, Scope: r.PostForm.Get("scope"),
	}), token, life), id)
}

// checkGrant answers a grant type other than client_credentials.
func checkGrant(grant string) (reply, bool) {
	switch grant {
	case "client_credentials":
		return reply{}, true
	case "":
		return jsonReply(http.StatusBadRequest, oauth2Error{"invalid_request", "grant_type is missing"}), false
	default:
		return jsonReply(http.StatusBadRequest, oauth2Error{"unsupported_grant_type",
			"Only the client_credentials grant is supported"}), false
	}
}

func apimDenied(message string) reply {
	return jsonReply(http.StatusUnauthorized, struct {
		StatusCode int    `json:"statusCode"`
		Message    string `json:"message"`
	}{http.StatusUnauthorized, message})
}

// bearerProtected is an RFC 6750 protected resource of kind k.
func (s *Server) bearerProtected(k Kind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.use(k, bearer(r)) {
			rep := jsonReply(http.StatusUnauthorized, oauth2Error{"invalid_token", "The access token is invalid or has expired"})
			rep.header.Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			rep.write(w)
			return
		}
		jsonReply(http.StatusOK, map[string]string{"status": "ok"}).write(w)
	}
}
