// RUN: not moec-opt %s --moe-compile-pipeline="micro-batch-size=2.5" 2>&1 | FileCheck %s --check-prefix=FRACTION
// RUN: not moec-opt %s --moe-compile-pipeline="param-dtype=bf16" 2>&1 | FileCheck %s --check-prefix=DTYPE
// RUN: not moec-opt %s --moe-train-pipeline="seq-len=16" 2>&1 | FileCheck %s --check-prefix=UNKNOWN
// RUN: not moec-opt %s --moe-train-pipeline="param-dtype=bf16 bf16=true" 2>&1 | FileCheck %s --check-prefix=TRAIN-DTYPE

// Tests that the pipelines read their options with the job's reader and
// refuse what their driver does not implement, naming the pipeline.
// FRACTION: moe-compile-pipeline: micro-batch-size 2.5 must be an integer
// DTYPE: moe-compile-pipeline: param_dtype bf16 needs bf16 true (a bf16 model computes in bf16)
// UNKNOWN: no such option seq-len
// TRAIN-DTYPE: moe-train-pipeline: param_dtype bf16 is not implemented yet by moec train (the reference keeps fp32 master weights)

func.func @forward() {
  return
}
