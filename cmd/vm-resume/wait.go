package main

import "time"

func timeAfter() <-chan time.Time { return time.After(200 * time.Millisecond) }
