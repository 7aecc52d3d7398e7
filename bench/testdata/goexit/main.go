// Command goexit is a static Go program that only exits: the cost of one
// Go process start on this machine, which BenchmarkRunTrue sets beside
// nest run (nest run starts Go twice: the command and the sandbox's init).
package main

func main() {}
