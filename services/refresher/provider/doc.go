// Package provider holds one sub-package per provider kind (daraja, mpay,
// oauth2, airtel) and httpx, the HTTP plumbing they share: a timeout on every
// call, a capped body, JSON decoding with clear errors, and tracing of the
// upstream call. A provider implements refresher.Provider; adding one is a
// file plus its tests (CONTRIBUTING.md, "Adding a provider").
package provider
