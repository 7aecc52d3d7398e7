package escalate

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"

	"github.com/go-crypt/x/crypt"
	"github.com/go-crypt/x/yescrypt"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Password hashes a container's password_hash may hold: argon2id (what
// `nest passwd` prints), or a crypt(3) hash copied from a shadow file —
// yescrypt ($y$, Debian's default), sha512-crypt ($6$), sha256-crypt ($5$)
// or bcrypt ($2b$). All are checked in pure Go; verifying costs 2 to
// 250 ms of CPU, which the broker bounds (one at a time, rate limits).

// Argon2id parameters of HashPassword: OWASP's minimum (19 MiB, 2 passes,
// 1 lane), about 25 ms here.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonKeyLen  = 32
	argonSaltLen = 16
)

// HashPassword returns an argon2id hash of password in the PHC string
// format: $argon2id$v=19$m=19456,t=2,p=1$SALT$HASH.
func HashPassword(password string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// ErrLocked is a hash that no password matches: a shadow entry starting
// with ! or *.
var ErrLocked = errors.New("the password is locked")

// CheckHashFormat says what is wrong with a password hash, if anything,
// without checking a password.
func CheckHashFormat(h string) error {
	_, err := VerifyPassword(h, "")
	if errors.Is(err, ErrLocked) {
		return nil
	}
	return err
}

// VerifyPassword reports whether password matches the hash h. An error
// means h itself is unusable (or locked).
func VerifyPassword(h, password string) (bool, error) {
	switch {
	case h == "":
		return false, errors.New("no password hash")
	case h[0] == '!' || h[0] == '*':
		return false, ErrLocked
	case strings.HasPrefix(h, "$argon2id$"):
		return verifyArgon2id(h, password)
	case strings.HasPrefix(h, "$y$"):
		got, err := yescrypt.Hash([]byte(password), []byte(h))
		if err != nil {
			return false, fmt.Errorf("yescrypt hash: %w", err)
		}
		return subtle.ConstantTimeCompare(got, []byte(h)) == 1, nil
	case strings.HasPrefix(h, "$6$"):
		return verifySHACrypt(h, password, "$6$", sha512.New)
	case strings.HasPrefix(h, "$5$"):
		return verifySHACrypt(h, password, "$5$", sha256.New)
	case strings.HasPrefix(h, "$2a$") || strings.HasPrefix(h, "$2b$") || strings.HasPrefix(h, "$2y$"):
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			return false, fmt.Errorf("bcrypt hash: %w", err)
		}
		return bcrypt.CompareHashAndPassword([]byte(h), []byte(password)) == nil, nil
	}
	return false, errors.New("unknown hash: want $argon2id$ (nest passwd), $y$ (yescrypt), $6$, $5$ or $2b$")
}

func verifyArgon2id(h, password string) (bool, error) {
	bad := func(why string) (bool, error) { return false, errors.New("argon2id hash: " + why) }
	parts := strings.Split(h, "$")
	// "", "argon2id", "v=19", "m=…,t=…,p=…", salt, hash
	if len(parts) != 6 {
		return bad("want $argon2id$v=19$m=M,t=T,p=P$SALT$HASH")
	}
	if parts[2] != "v=19" {
		return bad("want version v=19")
	}
	var m, t, p uint64
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return bad("parameter " + strconv.Quote(kv))
		}
		switch k {
		case "m":
			m = n
		case "t":
			t = n
		case "p":
			p = n
		default:
			return bad("unknown parameter " + strconv.Quote(k))
		}
	}
	// Bounds keep a config from making each check take the machine:
	// at most 1 GiB, 16 passes, 16 lanes.
	if m < 8*p || m > 1<<20 || t < 1 || t > 16 || p < 1 || p > 16 {
		return bad("parameters out of range (m ≤ 1048576 KiB, 1 ≤ t ≤ 16, 1 ≤ p ≤ 16)")
	}
	salt, err := base64.RawStdEncoding.DecodeString(parts[4])
	if err != nil || len(salt) < 8 {
		return bad("salt")
	}
	want, err := base64.RawStdEncoding.DecodeString(parts[5])
	if err != nil || len(want) < 16 || len(want) > 64 {
		return bad("hash")
	}
	got := argon2.IDKey([]byte(password), salt, uint32(t), uint32(m), uint8(p), uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// verifySHACrypt checks a sha-crypt hash: PREFIX[rounds=N$]SALT$HASH.
func verifySHACrypt(h, password, prefix string, fn func() hash.Hash) (bool, error) {
	rest := strings.TrimPrefix(h, prefix)
	rounds := 5000
	if r, ok := strings.CutPrefix(rest, "rounds="); ok {
		n, after, found := strings.Cut(r, "$")
		v, err := strconv.Atoi(n)
		if !found || err != nil {
			return false, errors.New("sha-crypt hash: bad rounds")
		}
		rounds = min(max(v, 1000), 999999999)
		rest = after
	}
	salt, sum, found := strings.Cut(rest, "$")
	if !found || sum == "" || strings.Contains(sum, "$") || len(salt) > 16 {
		return false, fmt.Errorf("sha-crypt hash: want %s[rounds=N$]SALT$HASH", prefix)
	}
	got := crypt.KeySHACrypt(fn, []byte(password), []byte(salt), rounds)
	return subtle.ConstantTimeCompare(got, []byte(sum)) == 1, nil
}
