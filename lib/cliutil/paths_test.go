package cliutil

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/urfave/cli/v2"
)

// Relative paths from the command line and from the environment arrive
// absolute; unset flags keep their (absolute) defaults.
func TestPathFlagsAreAbsolute(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("TEST_CLOUDLET_KIT", "kit/dir")
	var base, catalog, image string
	var kits cli.StringSlice
	app := &cli.App{
		Flags: []cli.Flag{
			Path(&cli.StringFlag{Name: "base", Destination: &base}),
			Path(&cli.StringFlag{Name: "catalog", Value: "/etc/default.json", Destination: &catalog}),
			Path(&cli.StringFlag{Name: "image", Destination: &image}),
			Paths(&cli.StringSliceFlag{Name: "kit", EnvVars: []string{"TEST_CLOUDLET_KIT"}, Destination: &kits}),
		},
		Action: func(*cli.Context) error { return nil },
	}
	if err := app.RunContext(context.Background(), []string{"t", "--base", "some.base", "--image", "../x.img"}); err != nil {
		t.Fatal(err)
	}
	for what, got := range map[string][2]string{
		"base":    {base, filepath.Join(wd, "some.base")},
		"image":   {image, filepath.Join(filepath.Dir(wd), "x.img")},
		"catalog": {catalog, "/etc/default.json"},
	} {
		if got[0] != got[1] {
			t.Errorf("--%s = %q, want %q", what, got[0], got[1])
		}
	}
	if k := kits.Value(); len(k) != 1 || k[0] != filepath.Join(wd, "kit/dir") {
		t.Errorf("--kit from the environment = %q, want [%s]", k, filepath.Join(wd, "kit/dir"))
	}
}
