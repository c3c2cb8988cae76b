// Prints the fds this process has open (one per line, ascending), minus the one used to list.
#include <dirent.h>

#include <cstdio>
#include <cstdlib>
#include <set>

int main() {
  std::set<int> fds;
  DIR* d = opendir("/proc/self/fd");
  int own = dirfd(d);
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::atoi(e->d_name);
    if (fd != own) fds.insert(fd);
  }
  closedir(d);
  for (int fd : fds) std::printf("%d\n", fd);
  return 0;
}
