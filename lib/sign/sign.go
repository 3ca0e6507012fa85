// Package sign holds the ed25519 keys and the bytes of overlay signatures
// (format/SPEC.md section 6.1): key files, key IDs, the folder of trusted
// public keys, the SIGNER and SIGNATURE payloads and the signed message.
// It uses only the Go standard library's crypto.
package sign

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// AlgEd25519 is the only signature algorithm (the Algorithm byte).
const AlgEd25519 = 1

// Sizes of the payloads (SPEC.md section 6.1).
const (
	IDSize           = 8  // raw bytes of a key ID (16 hex digits)
	SignerSize       = 16 // Algorithm u8 || Reserved [7]byte || KeyID [8]byte
	SignatureSize    = SignerSize + ed25519.SignatureSize
	DigestSize       = sha256.Size
	privateKeyPrefix = "cloudlet-ed25519-private"
	publicKeyPrefix  = "cloudlet-ed25519-public"
)

// Domain starts the signed message, so an overlay signature can never be
// taken for a signature over anything else made with the same key.
const Domain = "cloudlet-overlay-signature-v1\x00"

// KeyID returns the key ID of a public key: the first 16 hex digits of
// sha256(public key).
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:IDSize])
}

// PublicKey is a trusted or announced public key.
type PublicKey struct {
	ID   string
	Key  ed25519.PublicKey
	File string // where it was read from, for messages
}

// PrivateKey is a signing key.
type PrivateKey struct {
	ID  string
	Key ed25519.PrivateKey
}

// Public returns the public half.
func (k *PrivateKey) Public() *PublicKey {
	return &PublicKey{ID: k.ID, Key: k.Key.Public().(ed25519.PublicKey)}
}

// Generate makes a new key pair from rand (crypto/rand.Reader if nil).
func Generate(rand io.Reader) (*PrivateKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand)
	if err != nil {
		return nil, err
	}
	return &PrivateKey{ID: KeyID(pub), Key: priv}, nil
}

// MarshalPrivate returns the private key file's content: one line
// "cloudlet-ed25519-private ID BASE64(seed)".
func (k *PrivateKey) MarshalPrivate() []byte {
	return fmt.Appendf(nil, "%s %s %s\n", privateKeyPrefix, k.ID, base64.StdEncoding.EncodeToString(k.Key.Seed()))
}

// MarshalPublic returns the public key file's content: one line
// "cloudlet-ed25519-public ID BASE64(public key)".
func (k *PublicKey) MarshalPublic() []byte {
	return fmt.Appendf(nil, "%s %s %s\n", publicKeyPrefix, k.ID, base64.StdEncoding.EncodeToString(k.Key))
}

func parseLine(b []byte, prefix string, size int) (id string, raw []byte, err error) {
	f := strings.Fields(string(b))
	if len(f) != 3 || f[0] != prefix {
		return "", nil, fmt.Errorf("not a %s key file (want one line %q)", strings.TrimPrefix(prefix, "cloudlet-ed25519-"), prefix+" KEYID BASE64")
	}
	raw, err = base64.StdEncoding.DecodeString(f[2])
	if err != nil || len(raw) != size {
		return "", nil, fmt.Errorf("bad key: want %d bytes in base64", size)
	}
	return f[1], raw, nil
}

// ParsePublic parses a public key file.
func ParsePublic(b []byte) (*PublicKey, error) {
	id, raw, err := parseLine(b, publicKeyPrefix, ed25519.PublicKeySize)
	if err != nil {
		return nil, err
	}
	k := &PublicKey{ID: KeyID(raw), Key: raw}
	if id != k.ID {
		return nil, fmt.Errorf("key ID %s does not match the key (its ID is %s)", id, k.ID)
	}
	return k, nil
}

// ParsePrivate parses a private key file.
func ParsePrivate(b []byte) (*PrivateKey, error) {
	id, raw, err := parseLine(b, privateKeyPrefix, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	priv := ed25519.NewKeyFromSeed(raw)
	k := &PrivateKey{ID: KeyID(priv.Public().(ed25519.PublicKey)), Key: priv}
	if id != k.ID {
		return nil, fmt.Errorf("key ID %s does not match the key (its ID is %s)", id, k.ID)
	}
	return k, nil
}

// LoadPrivate reads a private key file. It refuses files that others can
// read or write, as ssh does.
func LoadPrivate(path string) (*PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("private key %s has mode %04o: others may read it; chmod 600 it", path, st.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("private key: %w", err)
	}
	k, err := ParsePrivate(b)
	if err != nil {
		return nil, fmt.Errorf("private key %s: %w", path, err)
	}
	return k, nil
}

// LoadPublic reads a public key file.
func LoadPublic(path string) (*PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	k, err := ParsePublic(b)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	k.File = path
	return k, nil
}

// Keyring is a set of trusted public keys by key ID.
type Keyring map[string]*PublicKey

// IDs returns the key IDs, sorted.
func (k Keyring) IDs() []string {
	ids := make([]string, 0, len(k))
	for id := range k {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// LoadTrusted reads every *.pub file in dir. A malformed .pub file, two
// files with the same key, or a folder without keys is an error, so a typo
// never silently trusts nothing.
func LoadTrusted(dir string) (Keyring, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("trusted keys: %w", err)
	}
	ring := Keyring{}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".pub") || e.IsDir() {
			continue
		}
		k, err := LoadPublic(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("trusted keys: %w", err)
		}
		if old, ok := ring[k.ID]; ok {
			return nil, fmt.Errorf("trusted keys: %s and %s hold the same key %s", old.File, k.File, k.ID)
		}
		ring[k.ID] = k
	}
	if len(ring) == 0 {
		return nil, fmt.Errorf("trusted keys: no *.pub key file in %s (make one with overlay-keygen)", dir)
	}
	return ring, nil
}

// WriteKeyPair writes the private key to path (mode 0600) and the public
// key to path+".pub" (0644). Each file appears atomically and existing
// files are never overwritten.
func WriteKeyPair(path string, k *PrivateKey) error {
	for _, p := range []string{path, path + ".pub"} {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s exists; not overwriting a key", p)
		}
	}
	if err := writeNew(path, k.MarshalPrivate(), 0o600); err != nil {
		return err
	}
	if err := writeNew(path+".pub", k.Public().MarshalPublic(), 0o644); err != nil {
		os.Remove(path)
		return err
	}
	return nil
}

// writeNew writes a temporary file next to path and links it into place,
// which fails if path exists.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	err = f.Chmod(mode)
	if err == nil {
		_, err = f.Write(b)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// SignerPayload is the payload of a SIGNER record.
func SignerPayload(id string) ([]byte, error) {
	raw, err := hex.DecodeString(id)
	if err != nil || len(raw) != IDSize {
		return nil, fmt.Errorf("sign: bad key ID %q", id)
	}
	p := make([]byte, SignerSize)
	p[0] = AlgEd25519
	copy(p[8:], raw)
	return p, nil
}

// ErrMalformed is wrapped by errors about SIGNER and SIGNATURE payloads.
var ErrMalformed = errors.New("malformed signature record")

// ParseSigner returns the key ID of a SIGNER payload.
func ParseSigner(p []byte) (string, error) {
	if len(p) != SignerSize {
		return "", fmt.Errorf("%w: SIGNER of %d bytes, want %d", ErrMalformed, len(p), SignerSize)
	}
	return parseHead(p)
}

func parseHead(p []byte) (string, error) {
	if p[0] != AlgEd25519 {
		return "", fmt.Errorf("%w: algorithm %d, this tool knows 1 (ed25519)", ErrMalformed, p[0])
	}
	if !bytes.Equal(p[1:8], make([]byte, 7)) {
		return "", fmt.Errorf("%w: reserved bytes are not zero", ErrMalformed)
	}
	return hex.EncodeToString(p[8:16]), nil
}

// Message is the byte string that is signed: Domain || KeyID [8]byte ||
// digest [32]byte, digest being the sha256 of every overlay byte before
// the SIGNATURE frame.
func Message(id string, digest []byte) []byte {
	raw, _ := hex.DecodeString(id)
	m := make([]byte, 0, len(Domain)+IDSize+DigestSize)
	m = append(m, Domain...)
	m = append(m, raw...)
	return append(m, digest...)
}

// SignaturePayload signs digest and returns a SIGNATURE payload.
func SignaturePayload(k *PrivateKey, digest []byte) ([]byte, error) {
	if len(digest) != DigestSize {
		return nil, fmt.Errorf("sign: digest of %d bytes", len(digest))
	}
	p, err := SignerPayload(k.ID)
	if err != nil {
		return nil, err
	}
	return append(p, ed25519.Sign(k.Key, Message(k.ID, digest))...), nil
}

// ParseSignature splits a SIGNATURE payload into key ID and signature.
func ParseSignature(p []byte) (id string, sig []byte, err error) {
	if len(p) != SignatureSize {
		return "", nil, fmt.Errorf("%w: SIGNATURE of %d bytes, want %d", ErrMalformed, len(p), SignatureSize)
	}
	id, err = parseHead(p)
	return id, p[SignerSize:], err
}

// Verify reports whether sig is k's signature over digest.
func Verify(k *PublicKey, digest, sig []byte) bool {
	return len(digest) == DigestSize && ed25519.Verify(k.Key, Message(k.ID, digest), sig)
}

// HashWriter passes writes to W and hashes them with sha256.
type HashWriter struct {
	W io.Writer
	h hash.Hash
}

// NewHashWriter returns a HashWriter over w.
func NewHashWriter(w io.Writer) *HashWriter { return &HashWriter{W: w, h: sha256.New()} }

func (h *HashWriter) Write(p []byte) (int, error) {
	n, err := h.W.Write(p)
	h.h.Write(p[:n])
	return n, err
}

// Sum returns the sha256 of everything written so far.
func (h *HashWriter) Sum() []byte { return h.h.Sum(nil) }
