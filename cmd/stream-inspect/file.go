package main

import (
	"fmt"
	"os"
)

func openFile(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w (give a stream file, or - for stdin)", err)
	}
	return f, nil
}
