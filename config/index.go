package config

import (
	"sort"
	"strconv"

	"github.com/pelletier/go-toml/v2/unstable"
)

// path names a value in the document: each key part quoted, each array
// index in brackets, e.g. "service"[1]"restart". The root is "".
type path string

func (p path) key(k string) path { return p + path(strconv.Quote(k)) }
func (p path) idx(i int) path    { return p + "[" + path(strconv.Itoa(i)) + "]" }

// place is where a path's key and value start, as byte offsets; -1 when
// unknown. Tables made by a header have the header's last key part as both.
type place struct{ key, val int }

// index maps every path of a document to its place.
type index struct {
	lines  []int // byte offset of the start of each line
	places map[path]place
	counts map[path]int // number of elements of each array of tables so far
}

// newIndex walks a document that the TOML decoder accepted. If the walk
// meets an error anyway, the index keeps what it has.
func newIndex(data []byte) *index {
	ix := &index{lines: []int{0}, places: map[path]place{}, counts: map[path]int{}}
	for i, b := range data {
		if b == '\n' {
			ix.lines = append(ix.lines, i+1)
		}
	}
	var p unstable.Parser
	p.Reset(data)
	var table path
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table = ix.header(e)
		case unstable.KeyValue:
			ix.keyValue(data, table, e)
		}
	}
	return ix
}

// header records a [table] or [[array.table]] header and returns the path
// of the table it opens.
func (ix *index) header(e *unstable.Node) path {
	var parts []*unstable.Node
	for it := e.Key(); it.Next(); {
		parts = append(parts, it.Node())
	}
	var p path
	for i, k := range parts {
		p = p.key(string(k.Data))
		off := int(k.Raw.Offset)
		ix.set(p, off, -1)
		switch {
		case i < len(parts)-1:
			// An array of tables in the middle of a header means its
			// last element.
			if n := ix.counts[p]; n > 0 {
				p = p.idx(n - 1)
			}
		case e.Kind == unstable.ArrayTable:
			n := ix.counts[p]
			ix.counts[p] = n + 1
			p = p.idx(n)
			ix.set(p, off, off)
		default:
			ix.set(p, off, off)
		}
	}
	return p
}

// keyValue records key = value (also inside inline tables) below base.
func (ix *index) keyValue(data []byte, base path, kv *unstable.Node) {
	p := base
	end := -1
	for it := kv.Key(); it.Next(); {
		k := it.Node()
		p = p.key(string(k.Data))
		ix.set(p, int(k.Raw.Offset), -1)
		end = int(k.Raw.Offset + k.Raw.Length)
	}
	v := kv.Value()
	off := -1
	if v.Kind != unstable.Array {
		off = int(v.Raw.Offset)
	} else if end >= 0 {
		// Arrays carry no range: the value starts after "=" and blanks.
		off = end
		for off < len(data) && (data[off] == ' ' || data[off] == '\t') {
			off++
		}
		if off < len(data) && data[off] == '=' {
			off++
		}
		for off < len(data) && (data[off] == ' ' || data[off] == '\t') {
			off++
		}
	}
	ix.set(p, -1, off)
	ix.value(data, p, v, off)
}

// value records the elements of arrays and inline tables. off is where v
// starts.
func (ix *index) value(data []byte, p path, v *unstable.Node, off int) {
	switch v.Kind {
	case unstable.Array:
		i := 0
		for it := v.Children(); it.Next(); {
			c := it.Node()
			if c.Kind == unstable.Comment {
				continue
			}
			coff := int(c.Raw.Offset)
			if c.Kind == unstable.Array {
				coff = arrayStart(data, c, off)
			}
			ix.set(p.idx(i), coff, coff)
			ix.value(data, p.idx(i), c, coff)
			i++
		}
	case unstable.InlineTable:
		for it := v.Children(); it.Next(); {
			if c := it.Node(); c.Kind == unstable.KeyValue {
				ix.keyValue(data, p, c)
			}
		}
	}
}

// arrayStart finds where a nested array starts, since arrays carry no
// range: back from its first element with a range over blanks and as many
// '[' as there are arrays in between. It returns fallback when that fails
// (an empty array, a comment in the way).
func arrayStart(data []byte, a *unstable.Node, fallback int) int {
	depth := 0
	n := a
	for n != nil && n.Kind == unstable.Array {
		depth++
		n = n.Child()
	}
	if n == nil {
		return fallback
	}
	for i := int(n.Raw.Offset) - 1; i >= 0; i-- {
		switch data[i] {
		case ' ', '\t', '\r', '\n':
		case '[':
			if depth--; depth == 0 {
				return i
			}
		default:
			return fallback
		}
	}
	return fallback
}

// set fills in the key and value offsets of p that are not known yet; -1
// leaves one alone.
func (ix *index) set(p path, key, val int) {
	pl, ok := ix.places[p]
	if !ok {
		pl = place{-1, -1}
	}
	if pl.key < 0 {
		pl.key = key
	}
	if pl.val < 0 {
		pl.val = val
	}
	ix.places[p] = pl
}

// pos returns the line and column of the key (onKey) or value of the first
// path in ps that the index knows, falling back to the value or key; 0, 0
// when none is known. A nil index knows nothing.
func (ix *index) pos(onKey bool, ps ...path) (line, col int) {
	if ix == nil {
		return 0, 0
	}
	for _, p := range ps {
		pl, ok := ix.places[p]
		if !ok {
			continue
		}
		off := pl.val
		if onKey && pl.key >= 0 || off < 0 {
			off = pl.key
		}
		if off < 0 {
			continue
		}
		l := sort.Search(len(ix.lines), func(i int) bool { return ix.lines[i] > off }) - 1
		return l + 1, off - ix.lines[l] + 1
	}
	return 0, 0
}
