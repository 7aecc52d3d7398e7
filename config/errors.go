package config

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// Error is one problem in a config, at a place in its file.
type Error struct {
	File      string // file name, or BuiltIn
	Line, Col int    // 1-based; 0 when unknown
	Msg       string
}

// Error returns "FILE:LINE:COL: MSG", leaving out what is unknown.
func (e *Error) Error() string {
	s := e.File
	if e.Line > 0 {
		s += ":" + strconv.Itoa(e.Line)
		if e.Col > 0 {
			s += ":" + strconv.Itoa(e.Col)
		}
	}
	if s == "" {
		return e.Msg
	}
	return s + ": " + e.Msg
}

// maxErrors is how many problems one error reports.
const maxErrors = 10

// problems collects the errors of one pass over a config.
type problems struct {
	file string
	ix   *index // nil: no positions
	list []*Error
	to   *problems // set: problems go to its list (see in)
}

// in returns problems that are placed in another file (or index) but
// collected in p's list: a pass over a config reports problems of a
// container from containers.d in that container's own file.
func (p *problems) in(file string, ix *index) *problems {
	root := p
	for root.to != nil {
		root = root.to
	}
	if file == "" {
		file = p.file
	}
	return &problems{file: file, ix: ix, to: root}
}

// at records a problem at the key (onKey) or the value of the first path
// of ps that the index knows.
func (p *problems) at(onKey bool, ps []path, format string, args ...any) {
	e := &Error{File: p.file, Msg: fmt.Sprintf(format, args...)}
	e.Line, e.Col = p.ix.pos(onKey, ps...)
	root := p
	for root.to != nil {
		root = root.to
	}
	root.list = append(root.list, e)
}

// val records a problem with the value at the first known path of ps.
func (p *problems) val(ps []path, format string, args ...any) { p.at(false, ps, format, args...) }

// key records a problem with the key at the first known path of ps.
func (p *problems) key(ps []path, format string, args ...any) { p.at(true, ps, format, args...) }

// err returns nil, the only problem, or the first maxErrors problems in
// the order of the file joined (files in the order their first problem
// was found).
func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	if len(p.list) == 1 {
		return p.list[0]
	}
	list := slices.Clone(p.list)
	files := map[string]int{}
	for _, e := range list {
		if _, ok := files[e.File]; !ok {
			files[e.File] = len(files)
		}
	}
	slices.SortStableFunc(list, func(a, b *Error) int {
		if a.File != b.File {
			return files[a.File] - files[b.File]
		}
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Col - b.Col
	})
	var errs []error
	for i, e := range list {
		if i == maxErrors {
			errs = append(errs, &Error{File: p.file, Msg: fmt.Sprintf("and %d more problems", len(list)-maxErrors)})
			break
		}
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}
