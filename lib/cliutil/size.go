package cliutil

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize reads a byte count: a number with an optional unit, K, M, G or
// T (powers of 1024; KiB, MB and the like are read the same way), e.g.
// "512M", "8G", "1048576".
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	num := strings.TrimRightFunc(t, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.ToUpper(strings.TrimSpace(t[len(num):]))
	unit = strings.TrimSuffix(strings.TrimSuffix(unit, "B"), "I")
	shift := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
	sh, ok := shift[unit]
	n, err := strconv.ParseUint(num, 10, 64)
	if !ok || err != nil || (sh > 0 && n > (^uint64(0))>>sh) {
		return 0, Usagef("size %q: want a number of bytes with an optional K, M, G or T (e.g. 8G)", s)
	}
	return n << sh, nil
}

// FormatSize writes a byte count the way ParseSize reads it, in the
// largest unit that divides it.
func FormatSize(n uint64) string {
	for _, u := range []struct {
		s  string
		sh uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n >= 1<<u.sh && n%(1<<u.sh) == 0 {
			return fmt.Sprintf("%d%s", n>>u.sh, u.s)
		}
	}
	return strconv.FormatUint(n, 10)
}
