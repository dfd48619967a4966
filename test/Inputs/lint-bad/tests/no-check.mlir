// RUN: moec-opt %s
func.func @f() { return }
