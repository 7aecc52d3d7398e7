package escalate

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// SSHSIG (OpenSSH's PROTOCOL.sshsig, what `ssh-keygen -Y sign` makes):
// the key signs a preamble, a namespace and a hash of the message, never
// the message itself, so that a signature made for escalation can never
// pass for an SSH login or any other use of the same key.

// SigNamespace is the SSHSIG namespace of escalation signatures.
const SigNamespace = "nest-escalate"

const (
	sigMagic   = "SSHSIG"
	sigVersion = 1
	sigHash    = "sha512"
)

// SignedMessage is what a client signs for a request: the connection's
// nonce, then the request's body exactly as it was sent.
func SignedMessage(nonce, body []byte) []byte {
	return append(append([]byte("nest-escalate-v1\x00"), nonce...), body...)
}

// sigData is the blob the key signs for message.
func sigData(namespace string, message []byte) []byte {
	h := sha512.Sum512(message)
	var b bytes.Buffer
	b.WriteString(sigMagic)
	putString(&b, []byte(namespace))
	putString(&b, nil) // reserved
	putString(&b, []byte(sigHash))
	putString(&b, h[:])
	return b.Bytes()
}

func putString(b *bytes.Buffer, s []byte) {
	binary.Write(b, binary.BigEndian, uint32(len(s)))
	b.Write(s)
}

// SignFunc signs data with a key: ssh.Signer.Sign, or an ssh-agent's.
type SignFunc func(data []byte) (*ssh.Signature, error)

// Sign makes an SSHSIG signature of message under namespace with the key
// pub, through sign.
func Sign(pub ssh.PublicKey, sign SignFunc, namespace string, message []byte) ([]byte, error) {
	sig, err := sign(sigData(namespace, message))
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(sigMagic)
	binary.Write(&b, binary.BigEndian, uint32(sigVersion))
	putString(&b, pub.Marshal())
	putString(&b, []byte(namespace))
	putString(&b, nil)
	putString(&b, []byte(sigHash))
	putString(&b, ssh.Marshal(sig))
	return b.Bytes(), nil
}

// Verify checks an SSHSIG signature of message under namespace and returns
// the key that made it, which must be one of keys.
func Verify(blob []byte, namespace string, message []byte, keys []ssh.PublicKey) (ssh.PublicKey, error) {
	r := sigReader{b: blob}
	if string(r.next(len(sigMagic))) != sigMagic {
		return nil, errors.New("not an SSHSIG signature")
	}
	if v := r.uint32(); v != sigVersion {
		return nil, fmt.Errorf("SSHSIG version %d, want %d", v, sigVersion)
	}
	pubBytes := r.string()
	ns := r.string()
	r.string() // reserved
	hashAlg := r.string()
	sigBytes := r.string()
	if r.err != nil || len(r.b) != 0 {
		return nil, errors.New("malformed SSHSIG signature")
	}
	if string(ns) != namespace {
		return nil, fmt.Errorf("signature for namespace %s, want %s", quote(string(ns)), namespace)
	}
	pub, err := ssh.ParsePublicKey(pubBytes)
	if err != nil {
		return nil, fmt.Errorf("signature's key: %w", err)
	}
	known := false
	for _, k := range keys {
		if bytes.Equal(k.Marshal(), pubBytes) {
			known = true
			break
		}
	}
	if !known {
		return nil, fmt.Errorf("key %s is not among the keys the parent accepts", ssh.FingerprintSHA256(pub))
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(sigBytes, &sig); err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	if sig.Format == ssh.KeyAlgoRSA {
		return nil, errors.New("an RSA signature must use SHA-2 (rsa-sha2-512), not ssh-rsa")
	}
	if string(hashAlg) != sigHash {
		return nil, fmt.Errorf("SSHSIG hash %s is not supported; want %s", quote(string(hashAlg)), sigHash)
	}
	if err := pub.Verify(sigData(namespace, message), &sig); err != nil {
		return nil, fmt.Errorf("bad signature by %s", ssh.FingerprintSHA256(pub))
	}
	return pub, nil
}

// sigReader reads SSH wire strings, remembering the first error.
type sigReader struct {
	b   []byte
	err error
}

func (r *sigReader) next(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b) {
		r.err = errors.New("short")
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

func (r *sigReader) uint32() uint32 {
	b := r.next(4)
	if b == nil {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func (r *sigReader) string() []byte {
	n := r.uint32()
	if n > uint32(len(r.b)) {
		r.err = errors.New("short")
		return nil
	}
	return r.next(int(n))
}

// ParseKeys reads authorized_keys lines: blank lines and # comments are
// skipped; options before the key are not allowed (nest has none). Each
// error names its line.
func ParseKeys(lines []string, where string) ([]ssh.PublicKey, error) {
	var keys []ssh.PublicKey
	for i, line := range lines {
		t := bytes.TrimSpace([]byte(line))
		if len(t) == 0 || t[0] == '#' {
			continue
		}
		pub, _, options, rest, err := ssh.ParseAuthorizedKey(t)
		if err != nil {
			return nil, fmt.Errorf("%s line %d: not an SSH public key: %w", where, i+1, err)
		}
		if len(options) > 0 {
			return nil, fmt.Errorf("%s line %d: options before the key are not supported", where, i+1)
		}
		if len(bytes.TrimSpace(rest)) > 0 {
			return nil, fmt.Errorf("%s line %d: one key per line", where, i+1)
		}
		keys = append(keys, pub)
	}
	return keys, nil
}
