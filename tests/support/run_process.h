// Runs a command through the shell and captures what it prints, for tests of whole programs.
#pragma once

#include <string>

namespace actmem::testing {

struct ProcessResult {
  int exit_code = -1;  // -1 when it did not exit normally
  std::string output;  // stdout and stderr together
};

// Runs `command` with `/bin/sh -c`, stderr merged into stdout.
ProcessResult run_process(const std::string& command);

// The whole content of a file, or "" when it cannot be read.
std::string read_file(const std::string& path);

// A fresh path under the temporary directory, unique to this process and call.
std::string temp_path(const std::string& stem);

}  // namespace actmem::testing
