package service

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Command is what a client asks in its one exec request. Nothing in it
// reaches a shell: the runner builds argument lists from these fields.
type Command struct {
	Verb       string // "synthesis", "list", "stop" or "help"
	Name       string // synthesis: the instance's name; stop: the instance to end
	GuestPorts []int  // synthesis: forward these guest TCP ports (free host ports)
	EarlyStart bool   // synthesis: vm-resume --early-start
}

// MaxCommand caps an exec request's command line.
const MaxCommand = 4096

// maxForwards caps the forwards one synthesis may ask for.
const maxForwards = 16

var instanceName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Usage is what `help` and every refused command print.
const Usage = `commands (one per connection; the overlay on stdin for synthesis):
  synthesis [--name NAME] [--forward GUESTPORT | --forward tcp:0:GUESTPORT ...] [--early-start]
      synthesize the overlay on stdin; prints the instance's JSON line
      (host ports are free ones the cloudlet picks; the network policy is
      the cloudlet's). Without --forward, the overlay's recorded guest ports.
  list        your running instances, one JSON line each
  stop NAME   end one of your instances (its name or its run folder's name)
  help        this text`

// ParseCommand parses an exec request's command line.
func ParseCommand(line string) (Command, error) {
	if len(line) > MaxCommand {
		return Command{}, fmt.Errorf("the command is %d bytes, over %d", len(line), MaxCommand)
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return Command{}, fmt.Errorf("no command: ssh HOST synthesis < app.overlay (or list, stop NAME, help)")
	}
	c := Command{Verb: f[0]}
	args := f[1:]
	switch c.Verb {
	case "list", "help":
		if len(args) > 0 {
			return Command{}, fmt.Errorf("%s takes no arguments", c.Verb)
		}
	case "stop":
		if len(args) != 1 || !instanceName.MatchString(args[0]) {
			return Command{}, fmt.Errorf("stop takes one instance name (letters, digits, . _ -)")
		}
		c.Name = args[0]
	case "synthesis":
		for i := 0; i < len(args); i++ {
			a := args[i]
			name, val, hasVal := strings.Cut(a, "=")
			value := func() (string, error) {
				if hasVal {
					return val, nil
				}
				if i+1 >= len(args) {
					return "", fmt.Errorf("%s needs a value", name)
				}
				i++
				return args[i], nil
			}
			switch name {
			case "--early-start":
				if hasVal {
					return Command{}, fmt.Errorf("--early-start takes no value")
				}
				c.EarlyStart = true
			case "--name":
				v, err := value()
				if err != nil {
					return Command{}, err
				}
				if !instanceName.MatchString(v) {
					return Command{}, fmt.Errorf("--name %q: letters, digits, . _ -, at most 64", v)
				}
				c.Name = v
			case "--forward":
				v, err := value()
				if err != nil {
					return Command{}, err
				}
				p, err := guestPort(v)
				if err != nil {
					return Command{}, err
				}
				if len(c.GuestPorts) == maxForwards {
					return Command{}, fmt.Errorf("more than %d forwards", maxForwards)
				}
				c.GuestPorts = append(c.GuestPorts, p)
			default:
				return Command{}, fmt.Errorf("synthesis: unknown option %q (the cloudlet chooses host ports, network policy and run folder)", a)
			}
		}
	default:
		return Command{}, fmt.Errorf("unknown command %q", c.Verb)
	}
	return c, nil
}

// guestPort takes GUESTPORT or tcp:0:GUESTPORT (the front end's free-port
// form); a host port or address is the cloudlet's to choose, not a client's.
func guestPort(v string) (int, error) {
	s := v
	if rest, ok := strings.CutPrefix(v, "tcp:0:"); ok {
		s = rest
	} else if strings.Contains(v, ":") {
		return 0, fmt.Errorf("--forward %q: give the guest port (80 or tcp:0:80); the cloudlet picks the host's address and port", v)
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("--forward %q: not a TCP port", v)
	}
	return p, nil
}
