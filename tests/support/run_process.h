// Runs a command through the shell and captures what it prints, for tests of whole programs.
#pragma once

#include <map>
#include <string>

namespace actmem::testing {

struct ProcessResult {
  int exit_code = -1;  // -1 when it did not exit normally
  std::string output;  // stdout and stderr together
};

// Runs `command` with `/bin/sh -c`, stderr merged into stdout.
ProcessResult run_process(const std::string& command);

// A run of a program that reports what it did as "<key> <value>" lines (the fake libcudart's
// clients): the output, and each key's last value.
struct ReportingRun {
  int exit_code = -1;
  std::string output;
  std::map<std::string, std::string> values;

  std::string text(const std::string& key) const;  // "" when absent
  long long number(const std::string& key) const;  // -1 when absent
};
ReportingRun run_reporting(const std::string& command);

// The whole content of a file, or "" when it cannot be read.
std::string read_file(const std::string& path);

// A fresh path under the temporary directory, unique to this process and call.
std::string temp_path(const std::string& stem);

}  // namespace actmem::testing
