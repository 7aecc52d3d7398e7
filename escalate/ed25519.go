package escalate

import (
	"crypto/ed25519"
	"crypto/sha512"
	"errors"
	"io"

	"filippo.io/edwards25519"
	"golang.org/x/crypto/ssh"
)

// A key file's ed25519 key signs through ed25519Signer, not crypto/ed25519:
// the standard library multiplies by the base point with a table of 256
// points that it computes at the first signature of a process, 2 ms of CPU
// here, which nest escalate paid on every run (a whole escalation of true
// takes about 5). The variable-base multiplication of edwards25519 (constant
// time, as the table's is) needs no table: about 0.1 ms. The signature is
// RFC 8032's, deterministic, the same bytes as ed25519.Sign's
// (TestEd25519SignerMatchesStd); the broker checks it with
// crypto/ed25519.

// ed25519Signer is an ssh.Signer of an ed25519 private key.
type ed25519Signer struct {
	priv ed25519.PrivateKey
	pub  ssh.PublicKey
}

func newEd25519Signer(priv ed25519.PrivateKey) (*ed25519Signer, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, errors.New("ed25519: bad private key length")
	}
	pub, err := ssh.NewPublicKey(ed25519.PublicKey(priv[32:]))
	if err != nil {
		return nil, err
	}
	return &ed25519Signer{priv: priv, pub: pub}, nil
}

func (s *ed25519Signer) PublicKey() ssh.PublicKey { return s.pub }

func (s *ed25519Signer) Sign(_ io.Reader, data []byte) (*ssh.Signature, error) {
	return &ssh.Signature{Format: ssh.KeyAlgoED25519, Blob: signEd25519(s.priv, data)}, nil
}

// signEd25519 is ed25519.Sign(priv, message) (RFC 8032 section 5.1.6).
func signEd25519(priv ed25519.PrivateKey, message []byte) []byte {
	seed, pub := priv[:ed25519.SeedSize], priv[ed25519.SeedSize:]
	h := sha512.Sum512(seed)
	s, err := edwards25519.NewScalar().SetBytesWithClamping(h[:32])
	if err != nil {
		panic("ed25519: " + err.Error()) // 32 bytes: cannot fail
	}
	d := sha512.New()
	d.Write(h[32:])
	d.Write(message)
	r, err := edwards25519.NewScalar().SetUniformBytes(d.Sum(nil))
	if err != nil {
		panic("ed25519: " + err.Error()) // 64 bytes: cannot fail
	}
	R := new(edwards25519.Point).ScalarMult(r, edwards25519.NewGeneratorPoint()).Bytes()
	d.Reset()
	d.Write(R)
	d.Write(pub)
	d.Write(message)
	k, err := edwards25519.NewScalar().SetUniformBytes(d.Sum(nil))
	if err != nil {
		panic("ed25519: " + err.Error())
	}
	S := edwards25519.NewScalar().MultiplyAdd(k, s, r)
	return append(R, S.Bytes()...)
}

// signerOf makes the signer of a key that ssh.ParseRawPrivateKey read.
func signerOf(key any) (ssh.Signer, error) {
	switch k := key.(type) {
	case *ed25519.PrivateKey:
		return newEd25519Signer(*k)
	case ed25519.PrivateKey:
		return newEd25519Signer(k)
	}
	return ssh.NewSignerFromKey(key)
}
