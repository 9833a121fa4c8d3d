// Package seal owns the encryption of runtime providers' secrets at rest
// (SPEC §8): AES-256-GCM from the standard library, a random 96-bit nonce per
// seal, the key id stored with each sealed value, and the provider name bound
// as additional data so that a sealed value cannot be moved to another entry.
// The first key of a Keyring seals; every key opens.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
)

// KeySize is the size of an AES-256 key in bytes.
const KeySize = 32

// Key is one sealing key: an id stored with every value it seals, and 32
// secret bytes.
type Key struct {
	ID   string
	aead cipher.AEAD
}

// ErrOpen is returned when a sealed value cannot be opened: unknown key id,
// wrong key, tampered or moved ciphertext.
var ErrOpen = errors.New("seal: cannot open sealed value")

var idRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// ParseKey decodes a key given as standard base64 (padded or not) of 32
// bytes. Its error says what is wrong, never the value.
func ParseKey(id, b64 string) (Key, error) {
	if !idRE.MatchString(id) {
		return Key{}, errors.New("seal: key id: want 1 to 32 letters, digits, _ or -")
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		raw, err = base64.RawStdEncoding.DecodeString(b64)
	}
	if err != nil {
		return Key{}, errors.New("seal: key: not base64 (generate one with: openssl rand -base64 32)")
	}
	if len(raw) != KeySize {
		return Key{}, fmt.Errorf("seal: key: %d bytes, want %d (generate one with: openssl rand -base64 32)", len(raw), KeySize)
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return Key{}, fmt.Errorf("seal: key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return Key{}, fmt.Errorf("seal: key: %w", err)
	}
	return Key{ID: id, aead: aead}, nil
}

// Keyring seals with its first key and opens with any.
type Keyring struct {
	keys []Key
}

// NewKeyring returns a keyring; keys[0] seals. Ids must be distinct.
func NewKeyring(keys ...Key) (*Keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("seal: no key")
	}
	seen := map[string]bool{}
	for _, k := range keys {
		if k.aead == nil {
			return nil, errors.New("seal: key not parsed")
		}
		if seen[k.ID] {
			return nil, fmt.Errorf("seal: duplicate key id %q", k.ID)
		}
		seen[k.ID] = true
	}
	return &Keyring{keys: keys}, nil
}

// Sealed is a sealed secret as stored: the id of the key that sealed it and
// nonce‖ciphertext‖tag (base64 in JSON).
type Sealed struct {
	KeyID string `json:"kid"`
	Box   []byte `json:"box"`
}

// SealingKeyID returns the id of the key that seals.
func (r *Keyring) SealingKeyID() string { return r.keys[0].ID }

// Seal encrypts plaintext with the first key, binding it to ad (the provider
// name and field).
func (r *Keyring) Seal(plaintext, ad []byte) (Sealed, error) {
	k := r.keys[0]
	nonce := make([]byte, k.aead.NonceSize(), k.aead.NonceSize()+len(plaintext)+k.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return Sealed{}, fmt.Errorf("seal: nonce: %w", err)
	}
	return Sealed{KeyID: k.ID, Box: k.aead.Seal(nonce, nonce, plaintext, ad)}, nil
}

// Open decrypts s with the key it names. Its error never holds the value.
func (r *Keyring) Open(s Sealed, ad []byte) ([]byte, error) {
	for _, k := range r.keys {
		if k.ID != s.KeyID {
			continue
		}
		n := k.aead.NonceSize()
		if len(s.Box) < n+k.aead.Overhead() {
			return nil, fmt.Errorf("%w: too short", ErrOpen)
		}
		pt, err := k.aead.Open(nil, s.Box[:n], s.Box[n:], ad)
		if err != nil {
			return nil, fmt.Errorf("%w: authentication failed (wrong key, or the value was altered or moved)", ErrOpen)
		}
		return pt, nil
	}
	return nil, fmt.Errorf("%w: no configured key has id %q", ErrOpen, s.KeyID)
}

// Stale reports whether s was sealed with a key other than the sealing key
// and should be re-sealed.
func (r *Keyring) Stale(s Sealed) bool { return s.KeyID != r.keys[0].ID }
