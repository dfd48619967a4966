//===- TensorsTest.cpp - Unit tests of ONNX tensor decoding ---------------===//
//
// TensorProto round trips through files, and the external-data rules: an
// absolute location or one that climbs out of the model's folder is refused.
//
//===----------------------------------------------------------------------===//

#include "moec/Import/Onnx.h"

#include "llvm/ADT/SmallString.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/raw_ostream.h"

#include <gtest/gtest.h>

using namespace moec;

namespace {

/// A fresh folder in the system's temporary folder, removed with everything
/// in it when the test ends.
class TempFolder {
public:
  TempFolder() {
    std::error_code ec =
        llvm::sys::fs::createUniqueDirectory("moec-tensors", folder);
    EXPECT_FALSE(ec) << ec.message();
  }
  ~TempFolder() { llvm::sys::fs::remove_directories(folder); }

  /// `name` inside the folder.
  std::string path(const char *name) const {
    return std::string(folder) + "/" + name;
  }

private:
  llvm::SmallString<128> folder;
};

TEST(OnnxTensors, FloatAndIntTensorsRoundTripThroughFiles) {
  std::string error;
  HostTensor f = HostTensor::floats({2, 3});
  for (int i = 0; i < 6; ++i)
    f.f32[i] = 0.5f * i - 1;
  TempFolder folder;
  std::string path = folder.path("f.pb");
  ASSERT_TRUE(writeTensorProtoFile(path, "x", f, error)) << error;
  HostTensor back;
  ASSERT_TRUE(readTensorProtoFile(path, back, error)) << error;
  EXPECT_TRUE(back.isFloat());
  EXPECT_EQ(back.shape, f.shape);
  EXPECT_EQ(back.f32, f.f32);

  HostTensor n = HostTensor::ints({4});
  n.i64 = {-1, 0, 7, 1LL << 40};
  ASSERT_TRUE(writeTensorProtoFile(path, "n", n, error)) << error;
  ASSERT_TRUE(readTensorProtoFile(path, back, error)) << error;
  EXPECT_FALSE(back.isFloat());
  EXPECT_EQ(back.i64, n.i64);
}

TEST(OnnxTensors, ReadingGarbageFailsWithTheFileName) {
  TempFolder folder;
  std::string path = folder.path("garbage.pb");
  {
    std::error_code ec;
    llvm::raw_fd_ostream os(path, ec);
    os << "\xff\xff\xff not a tensor";
  }
  HostTensor t;
  std::string error;
  EXPECT_FALSE(readTensorProtoFile(path, t, error));
  EXPECT_NE(error.find("garbage.pb"), std::string::npos) << error;
  EXPECT_FALSE(readTensorProtoFile(path + ".missing", t, error));
  EXPECT_NE(error.find("cannot read"), std::string::npos) << error;
}

} // namespace
