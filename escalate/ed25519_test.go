package escalate

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"testing"

	"golang.org/x/crypto/ssh"
)

// TestEd25519SignerMatchesStd: the table-free signature is crypto/ed25519's,
// byte for byte, for keys and messages of every kind.
func TestEd25519SignerMatchesStd(t *testing.T) {
	msgs := [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte{0xff}, 1000), make([]byte, 64<<10)}
	for i := range 200 {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		msg := msgs[i%len(msgs)]
		if i >= len(msgs) {
			msg = make([]byte, i)
			rand.Read(msg)
		}
		got, want := signEd25519(priv, msg), ed25519.Sign(priv, msg)
		if !bytes.Equal(got, want) {
			t.Fatalf("key %d: signature\n got %x\nwant %x", i, got, want)
		}
	}
}

// FuzzEd25519Signer: any seed and message.
func FuzzEd25519Signer(f *testing.F) {
	f.Add(make([]byte, 32), []byte("nest"))
	f.Fuzz(func(t *testing.T, seed, msg []byte) {
		if len(seed) != ed25519.SeedSize {
			return
		}
		priv := ed25519.NewKeyFromSeed(seed)
		if got, want := signEd25519(priv, msg), ed25519.Sign(priv, msg); !bytes.Equal(got, want) {
			t.Fatalf("seed %x: got %x, want %x", seed, got, want)
		}
	})
}

// TestSignerOfKeyFile: an OpenSSH ed25519 key file signs through
// ed25519Signer, and its SSHSIG verifies.
func TestSignerOfKeyFile(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ssh.ParseRawPrivateKey(pem.EncodeToMemory(block))
	if err != nil {
		t.Fatal(err)
	}
	s, err := signerOf(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.(*ed25519Signer); !ok {
		t.Fatalf("signerOf gave a %T", s)
	}
	sshPub, _ := ssh.NewPublicKey(pub)
	if !bytes.Equal(s.PublicKey().Marshal(), sshPub.Marshal()) {
		t.Fatal("the signer's public key is not the key's")
	}
	blob, err := Sign(s.PublicKey(), func(d []byte) (*ssh.Signature, error) { return s.Sign(nil, d) }, SigNamespace, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(blob, SigNamespace, []byte("m"), []ssh.PublicKey{sshPub}); err != nil {
		t.Fatalf("Verify: %v", err)
	}
}
