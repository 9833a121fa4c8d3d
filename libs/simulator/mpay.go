package simulator

import "net/http"

// mpayAuth is mPay's answer to /v2/auth, success or failure.
type mpayAuth struct {
	Status      int    `json:"status"`
	Description string `json:"description"`
	Token       string `json:"token"`
}

func (s *Server) registerMPay() {
	s.tokenRoute(MPay, http.MethodPost, "/v2/auth",
		`mPay token: JSON {"username","password"}; single-use`, s.mpayToken)
	s.route(http.MethodPost, "/v2/payments",
		"mPay protected call: Bearer token, consumed on success", s.mpayProtected)
}

// mpayToken issues a single-use token; earlier ones stay valid.
func (s *Server) mpayToken(r *http.Request) reply {
	var creds struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := decodeJSON(r, &creds); err != nil || creds.Username == "" || creds.Password == "" ||
		!s.accept(MPay, creds.Username, creds.Password, s.cfg.MPayUsername, s.cfg.MPayPassword) {
		return withCred(jsonReply(http.StatusBadRequest, mpayAuth{Description: "Bad request"}), creds.Username)
	}
	token := newUUID()
	return withCred(issue(jsonReply(http.StatusOK, mpayAuth{Status: 1, Description: "Success", Token: token}), token, s.cfg.MPayTTL), creds.Username)
}

type mpayStatus struct {
	Status      int    `json:"status"`
	Description string `json:"description"`
}

func (s *Server) mpayProtected(w http.ResponseWriter, r *http.Request) {
	if !s.use(MPay, bearer(r)) {
		jsonReply(http.StatusUnauthorized, mpayStatus{Description: "Invalid token"}).write(w)
		return
	}
	jsonReply(http.StatusOK, mpayStatus{Status: 1, Description: "Success"}).write(w)
}
