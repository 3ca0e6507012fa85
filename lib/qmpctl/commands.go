package qmpctl

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Version is QEMU's version as reported by query-version.
type Version struct {
	Major, Minor, Micro int
	Package             string // distribution package, e.g. "Debian 1:7.2+dfsg-7"
}

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro) }

// QueryVersion returns QEMU's version.
func (c *Client) QueryVersion(ctx context.Context) (Version, error) {
	var r struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	}
	if err := c.Execute(ctx, "query-version", nil, &r); err != nil {
		return Version{}, err
	}
	return Version{r.QEMU.Major, r.QEMU.Minor, r.QEMU.Micro, r.Package}, nil
}

// QueryStatus returns the run state (e.g. "running", "paused",
// "inmigrate", "postmigrate") and whether the guest CPUs are running.
func (c *Client) QueryStatus(ctx context.Context) (status string, running bool, err error) {
	var r struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Execute(ctx, "query-status", nil, &r); err != nil {
		return "", false, err
	}
	return r.Status, r.Running, nil
}

// Stop pauses the guest (QMP stop). QEMU emits a STOP event.
func (c *Client) Stop(ctx context.Context) error { return c.Execute(ctx, "stop", nil, nil) }

// Cont resumes the guest (QMP cont). QEMU emits a RESUME event.
func (c *Client) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// Quit asks QEMU to exit. A connection that closes before the reply arrives
// counts as success; the client is closed afterwards.
func (c *Client) Quit(ctx context.Context) error {
	err := c.Execute(ctx, "quit", nil, nil)
	c.Close()
	if err != nil && errors.Is(err, ErrClosed) {
		return nil
	}
	return err
}

// HumanMonitorCommand runs an HMP command (e.g. "info status") and returns
// its output. For debugging only: HMP output is not a stable interface.
func (c *Client) HumanMonitorCommand(ctx context.Context, cmd string) (string, error) {
	var out string
	err := c.Execute(ctx, "human-monitor-command", map[string]string{"command-line": cmd}, &out)
	return out, err
}

// QueryMachine returns the machine type in use with aliases resolved, e.g.
// "pc-i440fx-7.2" for "-machine pc". It is the QOM type of /machine without
// its "-machine" suffix: query-current-machine only reports
// wakeup-suspend-support and query-machines lists every type without marking
// the current one.
func (c *Client) QueryMachine(ctx context.Context) (string, error) {
	t, err := c.qomType(ctx, "/machine")
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(t, "-machine"), nil
}

// QueryCPUModel returns the model of the first guest CPU, e.g. "qemu64" or
// "max": the QOM type of the CPU from query-cpus-fast without its
// "-<target>-cpu" suffix.
func (c *Client) QueryCPUModel(ctx context.Context) (string, error) {
	var cpus []struct {
		QOMPath string `json:"qom-path"`
		Target  string `json:"target"`
	}
	if err := c.Execute(ctx, "query-cpus-fast", nil, &cpus); err != nil {
		return "", err
	}
	if len(cpus) == 0 {
		return "", errors.New("qmpctl: query-cpus-fast: no CPUs")
	}
	t, err := c.qomType(ctx, cpus[0].QOMPath)
	if err != nil {
		return "", err
	}
	if cpus[0].Target != "" {
		t = strings.TrimSuffix(t, "-"+cpus[0].Target+"-cpu")
	}
	return strings.TrimSuffix(t, "-cpu"), nil
}

func (c *Client) qomType(ctx context.Context, path string) (string, error) {
	var t string
	err := c.Execute(ctx, "qom-get", map[string]string{"path": path, "property": "type"}, &t)
	return t, err
}

// SetMigrationCapabilities sets migration capabilities, e.g.
// {"x-ignore-shared": true, "events": true}.
func (c *Client) SetMigrationCapabilities(ctx context.Context, caps map[string]bool) error {
	type capability struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	names := make([]string, 0, len(caps))
	for n := range caps {
		names = append(names, n)
	}
	sort.Strings(names)
	list := make([]capability, 0, len(names))
	for _, n := range names {
		list = append(list, capability{n, caps[n]})
	}
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// SetMigrationParameters sets migration parameters, e.g.
// {"max-bandwidth": int64(1) << 40, "downtime-limit": 2000} (bytes/s and
// milliseconds). The default max-bandwidth of 128 MiB/s throttles a local
// capture.
func (c *Client) SetMigrationParameters(ctx context.Context, params map[string]any) error {
	return c.Execute(ctx, "migrate-set-parameters", params, nil)
}

// UnthrottledMigration returns migration parameters for a local capture,
// for SetMigrationParameters: max-bandwidth 1 TiB/s (in effect no cap) and
// downtime-limit 2000 ms (QEMU's maximum is 2,000,000).
func UnthrottledMigration() map[string]any {
	return map[string]any{
		"max-bandwidth":  int64(1) << 40,
		"downtime-limit": 2000,
	}
}

// Migrate starts an outgoing migration to uri (e.g. "unix:/path/sock",
// "exec:cat > file", "fd:name"). It returns once started; use WaitMigration.
func (c *Client) Migrate(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", map[string]string{"uri": uri}, nil)
}

// MigrateIncoming starts an incoming migration from uri on a QEMU started
// with "-incoming defer". Use WaitMigration, then Cont.
func (c *Client) MigrateIncoming(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-incoming", map[string]string{"uri": uri}, nil)
}

// MigrationInfo is the result of query-migrate. Status is "" when no
// migration has run.
type MigrationInfo struct {
	Status      string `json:"status"`     // e.g. setup, active, completed, failed, cancelled
	ErrorDesc   string `json:"error-desc"` // QEMU's reason for a failure, if any
	TotalTimeMS int64  `json:"total-time"`
	DowntimeMS  int64  `json:"downtime"`
	RAM         struct {
		Total       int64 `json:"total"`       // guest RAM bytes
		Transferred int64 `json:"transferred"` // bytes sent so far
		Remaining   int64 `json:"remaining"`
		// DirtySyncCount counts the dirty bitmap syncs: 1 while the first
		// pass (every page) runs, n while pass n runs.
		DirtySyncCount int64 `json:"dirty-sync-count"`
	} `json:"ram"`
}

// MigrateContinue lets a migration paused in state "pre-switchover" (the
// pause-before-switchover capability) complete.
func (c *Client) MigrateContinue(ctx context.Context) error {
	return c.Execute(ctx, "migrate-continue", map[string]string{"state": "pre-switchover"}, nil)
}

// MigrateCancel cancels the current outgoing migration; QEMU lets a guest
// that ran before it run again.
func (c *Client) MigrateCancel(ctx context.Context) error {
	return c.Execute(ctx, "migrate_cancel", nil, nil)
}

// QueryMigrate returns the state of the current or last migration.
func (c *Client) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var info MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &info)
	return info, err
}

// MigrationError reports a migration that ended as failed or cancelled.
type MigrationError struct {
	Status string // "failed" or "cancelled"
	Desc   string // QEMU's error-desc; may be empty
}

func (e *MigrationError) Error() string {
	if e.Desc == "" {
		return "qmpctl: migration " + e.Status + " with no error text"
	}
	return "qmpctl: migration " + e.Status + ": " + e.Desc
}

// WaitMigration waits until the migration completes (nil) or ends as failed
// or cancelled (*MigrationError with QEMU's error-desc). It polls
// query-migrate and also wakes on MIGRATION events, which QEMU sends when
// the "events" capability is on. While no migration is known (status "")
// it keeps waiting, bounded by ctx.
func (c *Client) WaitMigration(ctx context.Context) error {
	const maxPoll = 100 * time.Millisecond
	poll := 5 * time.Millisecond
	for {
		w := c.subscribe("MIGRATION", nil, true)
		info, err := c.QueryMigrate(ctx)
		if err != nil {
			w.Cancel()
			return err
		}
		switch info.Status {
		case "completed":
			w.Cancel()
			return nil
		case "failed", "cancelled":
			w.Cancel()
			return &MigrationError{Status: info.Status, Desc: info.ErrorDesc}
		}
		wctx, cancel := context.WithTimeout(ctx, poll)
		_, err = w.Wait(wctx)
		cancel()
		if ctx.Err() != nil {
			return fmt.Errorf("qmpctl: waiting for migration (status %q): %w", info.Status, ctx.Err())
		}
		if errors.Is(err, ErrClosed) {
			return fmt.Errorf("qmpctl: waiting for migration (status %q): %w", info.Status, err)
		}
		if poll < maxPoll {
			poll *= 2
		}
	}
}
