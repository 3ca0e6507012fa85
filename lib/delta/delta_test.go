package delta

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

func page(r *rand.Rand, kind int) []byte {
	p := make([]byte, 4096)
	switch kind {
	case 0: // random
		for i := range p {
			p[i] = byte(r.Uint32())
		}
	case 1: // text
		words := []string{"the ", "guest ", "kernel ", "page ", "cache ", "\n", "0x7f3a ", "init "}
		var b bytes.Buffer
		for b.Len() < len(p) {
			b.WriteString(words[r.IntN(len(words))])
		}
		copy(p, b.Bytes())
	}
	return p
}

func variants(r *rand.Rand, base []byte) map[string][]byte {
	v := map[string][]byte{}
	v["same"] = bytes.Clone(base)
	one := bytes.Clone(base)
	one[100] ^= 0xff
	v["one byte"] = one
	few := bytes.Clone(base)
	for range 20 {
		few[r.IntN(len(few))] = byte(r.Uint32())
	}
	v["scattered"] = few
	ins := append(append(append([]byte{}, base[:1000]...), []byte("INSERTED!")...), base[1000:]...)
	v["inserted"] = ins[:len(base)]
	del := append(append([]byte{}, base[:500]...), base[600:]...)
	v["deleted"] = append(del, make([]byte, 100)...)
	v["shifted"] = append(bytes.Clone(base[64:]), base[:64]...)
	fresh := make([]byte, len(base))
	for i := range fresh {
		fresh[i] = byte(r.Uint32())
	}
	v["unrelated"] = fresh
	v["zero"] = make([]byte, len(base))
	v["short"] = []byte{1, 2, 3}
	return v
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for kind := range 3 {
		base := page(r, kind)
		for name, target := range variants(r, base) {
			b := base[:len(target)]
			for _, m := range []uint8{XOR, Ops} {
				d, err := Encode(m, b, target)
				if err != nil {
					t.Fatalf("Encode(%d, %s) = %v", m, name, err)
				}
				out := make([]byte, len(target))
				if err := Decode(m, b, d, out); err != nil {
					t.Fatalf("Decode(%d, %s) = %v", m, name, err)
				}
				if !bytes.Equal(out, target) {
					t.Fatalf("Decode(Encode(%d, %s)) differs from the target", m, name)
				}
			}
			method, d := Best(b, target)
			out := make([]byte, len(target))
			if method == Raw {
				continue
			}
			if err := Decode(method, b, d, out); err != nil || !bytes.Equal(out, target) {
				t.Fatalf("Best(%s) = method %d, which does not decode: %v", name, method, err)
			}
		}
	}
}

func TestOpsSmall(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	base := page(r, 0)
	v := variants(r, base)
	for name, max := range map[string]int{"same": 4, "one byte": 16, "inserted": 32, "deleted": 140, "shifted": 90} {
		d, _ := Encode(Ops, base, v[name])
		if len(d) > max {
			t.Errorf("Encode(Ops, %s) = %d bytes; want at most %d", name, len(d), max)
		}
	}
}

func TestBest(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	base := page(r, 0)
	v := variants(r, base)
	for _, c := range []struct {
		name string
		want uint8
	}{{"one byte", XOR}, {"scattered", XOR}, {"inserted", Ops}, {"shifted", Ops}, {"unrelated", Raw}, {"zero", Raw}} {
		if got, _ := Best(base, v[c.name]); got != c.want {
			t.Errorf("Best(%s) = %d; want %d", c.name, got, c.want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	base := make([]byte, 16)
	out := make([]byte, 16)
	for _, c := range []struct {
		name string
		prog []byte
	}{
		{"short", []byte{opCopy, 8}},
		{"long", []byte{opCopy, 16, opInsert, 1, 'x'}},
		{"copy past base", []byte{opSkip, 8, opCopy, 16}},
		{"insert past delta", []byte{opInsert, 16, 'a'}},
		{"bad op", []byte{7, 16}},
		{"truncated varint", []byte{opCopy, 0x80}},
		{"zero length", []byte{opCopy, 0, opCopy, 16}},
	} {
		if err := Decode(Ops, base, c.prog, out); err == nil {
			t.Errorf("Decode(Ops, %s) = nil; want an error", c.name)
		}
	}
	if err := Decode(XOR, base, make([]byte, 15), out); err == nil {
		t.Errorf("Decode(XOR) with a short delta = nil; want an error")
	}
	if err := Decode(9, base, nil, out); err == nil {
		t.Errorf("Decode(method 9) = nil; want an error")
	}
}

func FuzzDecode(f *testing.F) {
	base := []byte("the quick brown fox jumps over the lazy dog, again and again")
	target := []byte("the quick red fox jumps over the lazy cat, again and again!")
	target = append(target, make([]byte, len(base)-len(target))...)
	d, _ := Encode(Ops, base, target)
	f.Add(d, uint16(len(base)), uint8(Ops))
	f.Add([]byte{opInsert, 3, 'a', 'b', 'c'}, uint16(3), uint8(Ops))
	f.Add([]byte{1, 2, 3}, uint16(3), uint8(XOR))
	f.Fuzz(func(t *testing.T, delta []byte, n uint16, method uint8) {
		out := make([]byte, int(n)%200)
		b := base
		if len(out) < len(b) {
			b = b[:len(out)]
		}
		if err := Decode(method, b, delta, out); err != nil {
			return
		}
		// Whatever decodes must re-encode to a delta that decodes the same.
		if len(b) != len(out) {
			return
		}
		for _, m := range []uint8{XOR, Ops} {
			d2, err := Encode(m, b, out)
			if err != nil {
				t.Fatal(err)
			}
			out2 := make([]byte, len(out))
			if err := Decode(m, b, d2, out2); err != nil || !bytes.Equal(out, out2) {
				t.Fatalf("re-encoded delta (method %d) does not round-trip: %v", m, err)
			}
		}
	})
}

func BenchmarkBest(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	base := page(r, 1)
	v := variants(r, base)["scattered"]
	b.SetBytes(int64(len(base)))
	for b.Loop() {
		Best(base, v)
	}
}

func BenchmarkEncodeOps(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	base := page(r, 1)
	v := variants(r, base)["inserted"]
	b.SetBytes(int64(len(base)))
	for b.Loop() {
		Encode(Ops, base, v)
	}
}
