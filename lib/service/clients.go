// Package service is cloudletd's SSH front: who may connect (the clients
// file), what each client may ask (one command per connection: synthesis,
// list, stop) and what it may cost (per-client limits, bounds on connections
// that have not authenticated yet). What a command does is a Runner's job;
// Tools runs the project's own stages.
package service

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Limits bound what one client may hold and cost. Zero means no limit.
type Limits struct {
	Instances int           // instances of the client running at once (vm-resume --max-instances)
	Uploads   int           // syntheses of the client in progress at once
	Conns     int           // authenticated connections of the client at once
	MaxBytes  int64         // bytes of one overlay
	Idle      time.Duration // a connection that sends nothing for this long is closed
	Total     time.Duration // the longest one command may take
}

// Client is one line of the clients file: a public key and its name.
type Client struct {
	Name        string
	Fingerprint string // ssh.FingerprintSHA256 of the key
	Limits      Limits
}

var clientName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// maxClientsFile caps the clients file (a million keys is still under it).
const maxClientsFile = 64 << 20

// Clients is the parsed clients file: authorized_keys lines, the comment is
// the client's name (letters, digits, . _ -; a name may hold several keys),
// and options may lower or raise the defaults for that key:
//
//	instances=N,uploads=N,conns=N,max-bytes=SIZE ssh-ed25519 AAAA... alice
type Clients map[string]Client // by the key's marshalled bytes

// LoadClients reads a clients file; every line that is not blank or a
// comment must parse, so a typo never silently locks a client out or in.
func LoadClients(path string, defaults Limits, parseSize func(string) (uint64, error)) (Clients, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("clients file: %w", err)
	}
	if len(b) > maxClientsFile {
		return nil, fmt.Errorf("clients file %s: %d bytes, over %d", path, len(b), maxClientsFile)
	}
	cs := Clients{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, comment, opts, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("clients file %s, line %d: %v", path, n, err)
		}
		if !clientName.MatchString(comment) {
			return nil, fmt.Errorf("clients file %s, line %d: the key's comment %q must be the client's name (letters, digits, . _ -, at most 64)", path, n, comment)
		}
		c := Client{Name: comment, Fingerprint: ssh.FingerprintSHA256(key), Limits: defaults}
		for _, o := range opts {
			if err := c.Limits.set(o, parseSize); err != nil {
				return nil, fmt.Errorf("clients file %s, line %d: option %q: %v", path, n, o, err)
			}
		}
		cs[string(key.Marshal())] = c
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("clients file %s: %v", path, err)
	}
	return cs, nil
}

func (l *Limits) set(opt string, parseSize func(string) (uint64, error)) error {
	k, v, ok := strings.Cut(opt, "=")
	if !ok {
		return fmt.Errorf("want instances=N, uploads=N, conns=N or max-bytes=SIZE")
	}
	v = strings.Trim(v, `"`)
	if k == "max-bytes" {
		n, err := parseSize(v)
		if err != nil || n > 1<<62 {
			return fmt.Errorf("bad size %q", v)
		}
		l.MaxBytes = int64(n)
		return nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return fmt.Errorf("bad number %q", v)
	}
	switch k {
	case "instances":
		l.Instances = n
	case "uploads":
		l.Uploads = n
	case "conns":
		l.Conns = n
	default:
		return fmt.Errorf("unknown option %q (want instances, uploads, conns or max-bytes)", k)
	}
	return nil
}
