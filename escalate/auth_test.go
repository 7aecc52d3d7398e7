package escalate

import (
	"bytes"
	"crypto/rand"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/crypto/ssh"
)

// Hashes made by the system's own tools (openssl passwd -6, perl's crypt
// with libxcrypt), all of the password "secret".
var passwordVectors = []string{
	"$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/1GM/O6IND4WQhG.",
	"$6$rounds=10000$saltsalt$WowrPBpEDVlCoruBosYlrZycTCx3//TyDHYqEhX9DUHHt0XTztUqzQDDUuvUGRA8aUe9p55hcAxeGcu58sm3u.",
	"$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA",
	"$y$j9T$abcdefghijklmnop$3dL1LkYnZM.OVXuVdnnaKVDlLYT92dRwOzDZ5XiVCe.",
}

func TestVerifyPassword(t *testing.T) {
	b, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range append(passwordVectors, string(b)) {
		ok, err := VerifyPassword(h, "secret")
		if err != nil || !ok {
			t.Errorf("VerifyPassword(%s, secret) = %v, %v; want true", h, ok, err)
		}
		ok, err = VerifyPassword(h, "Secret")
		if err != nil || ok {
			t.Errorf("VerifyPassword(%s, Secret) = %v, %v; want false", h, ok, err)
		}
	}
	h, err := HashPassword("secret")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Errorf("HashPassword = %s", h)
	}
	if h2, _ := HashPassword("secret"); h2 == h {
		t.Errorf("two hashes of one password are the same: no salt")
	}
	for pw, want := range map[string]bool{"secret": true, "secret ": false, "": false} {
		if ok, err := VerifyPassword(h, pw); err != nil || ok != want {
			t.Errorf("VerifyPassword(argon2id, %q) = %v, %v; want %v", pw, ok, err, want)
		}
	}
	for _, tc := range []struct{ hash, want string }{
		{"", "no password hash"},
		{"!$6$abc$def", "locked"},
		{"*", "locked"},
		{"plain", "unknown hash"},
		{"$1$md5$xyz", "unknown hash"},
		{"$argon2id$v=19$m=1,t=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "out of range"},
		{"$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "out of range"},
		{"$argon2id$v=16$m=65536,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", "version"},
		{"$argon2id$v=19$m=65536,t=1,p=1$!!$aGFzaA", "salt"},
		{"$y$jZZ$abc$def", "yescrypt"},
		{"$6$saltsalt", "sha-crypt"},
		{"$2b$99$xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "bcrypt"},
	} {
		if _, err := VerifyPassword(tc.hash, "x"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("VerifyPassword(%q) = %v, want an error saying %q", tc.hash, err, tc.want)
		}
	}
}

func TestLimiter(t *testing.T) {
	var l limiter
	now := time.Unix(1000, 0)
	if d := l.locked(now); d != 0 {
		t.Fatalf("a new limiter is locked for %s", d)
	}
	var delays []time.Duration
	for range MaxFailures {
		delays = append(delays, l.fail(now))
	}
	if delays[0] != failureDelay || delays[1] != 2*failureDelay || delays[2] != 4*failureDelay {
		t.Errorf("delays %v, want doubling from %s", delays, failureDelay)
	}
	if d := l.locked(now.Add(time.Minute)); d != Lockout-time.Minute {
		t.Errorf("locked %s a minute after the last failure, want %s", d, Lockout-time.Minute)
	}
	if d := l.locked(now.Add(Lockout)); d != 0 {
		t.Errorf("still locked after the lockout: %s", d)
	}
	// A success, or a quiet window, starts the count again.
	l = limiter{}
	l.fail(now)
	l.succeed()
	l.fail(now)
	if l.locked(now) != 0 {
		t.Errorf("locked after a success and 1 failure")
	}
	l.fail(now.Add(FailureWindow + time.Second))
	l.fail(now.Add(FailureWindow + time.Second))
	if l.locked(now.Add(FailureWindow+time.Second)) != 0 {
		t.Errorf("failures older than the window counted")
	}
}

// SSHSIG as OpenSSH makes and checks it: ssh-keygen -Y sign and
// -Y check-novalidate agree with Sign and Verify.
func TestSSHSIGInterop(t *testing.T) {
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		t.Fatalf("ssh-keygen: %v (openssh-client is part of the test setup)", err)
	}
	dir := t.TempDir()
	k := newTestKey(t, dir, "id_ed25519")
	msgFile := filepath.Join(dir, "msg")
	msg := SignedMessage(bytes.Repeat([]byte{7}, NonceSize), []byte(`{"argv":["id"]}`))
	os.WriteFile(msgFile, msg, 0o600)
	keys := []ssh.PublicKey{k.signer.PublicKey()}

	// OpenSSH signs, nest verifies.
	out, err := exec.Command(keygen, "-Y", "sign", "-f", k.file, "-n", SigNamespace, msgFile).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -Y sign: %v\n%s", err, out)
	}
	armored, _ := os.ReadFile(msgFile + ".sig")
	block, _ := pem.Decode(armored)
	if block == nil || block.Type != "SSH SIGNATURE" {
		t.Fatalf("ssh-keygen wrote %q", armored)
	}
	if _, err := Verify(block.Bytes, SigNamespace, msg, keys); err != nil {
		t.Errorf("Verify of ssh-keygen's signature: %v", err)
	}
	if _, err := Verify(block.Bytes, SigNamespace, append(msg, 'x'), keys); err == nil {
		t.Errorf("Verify took ssh-keygen's signature for another message")
	}

	// nest signs, OpenSSH verifies.
	sig, err := Sign(k.signer.PublicKey(), func(d []byte) (*ssh.Signature, error) { return k.signer.Sign(rand.Reader, d) }, SigNamespace, msg)
	if err != nil {
		t.Fatal(err)
	}
	sigFile := filepath.Join(dir, "nest.sig")
	os.WriteFile(sigFile, pem.EncodeToMemory(&pem.Block{Type: "SSH SIGNATURE", Bytes: sig}), 0o600)
	cmd := exec.Command(keygen, "-Y", "check-novalidate", "-n", SigNamespace, "-s", sigFile)
	cmd.Stdin = bytes.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("ssh-keygen -Y check-novalidate of nest's signature: %v\n%s", err, out)
	}

	// Broken blobs are errors, never panics.
	for i := range len(sig) {
		if _, err := Verify(sig[:i], SigNamespace, msg, keys); err == nil {
			t.Fatalf("Verify of a signature cut to %d bytes passed", i)
		}
	}
}

func TestParseKeys(t *testing.T) {
	k := newTestKey(t, t.TempDir(), "k")
	keys, err := ParseKeys([]string{"", "# comment", k.line}, "keys")
	if err != nil || len(keys) != 1 {
		t.Fatalf("ParseKeys = %d keys, %v", len(keys), err)
	}
	for _, tc := range []struct{ line, want string }{
		{"ssh-ed25519 AAAAnot-base64", "line 1: not an SSH public key"},
		{`command="/bin/sh" ` + k.line, "options"},
		{k.line + "\n" + k.line, "one key per line"},
	} {
		if _, err := ParseKeys([]string{tc.line}, "keys"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseKeys(%q) = %v, want %q", tc.line, err, tc.want)
		}
	}
}

func TestAuditLine(t *testing.T) {
	var buf bytes.Buffer
	a := &Audit{console: &buf, now: time.Now}
	a.Record(Attempt{Child: "alice", Pid: 42, UID: 100000, As: "root", Method: "key", Key: "SHA256:abc",
		Command: []string{"sh", "-c", "echo a\nresult=allowed"}, Result: "refused", Reason: "wrong \"key\""})
	got := buf.String()
	want := `nest: escalate: child=alice pid=42 uid=100000 as=root method=key key=SHA256:abc command="sh -c \"echo a\\nresult=allowed\"" result=refused reason="wrong \"key\""` + "\n"
	if got != want {
		t.Errorf("audit line\n%s\nwant\n%s", got, want)
	}
	if strings.Count(got, "\n") != 1 {
		t.Errorf("a command made the audit line break: %q", got)
	}
}
