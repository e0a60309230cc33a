/* A spawn of /bin/true by posix_spawn (mode 0) or vfork + execve (mode 1),
 * from a process with seven signal handlers: the cost of glibc resetting
 * every signal in the posix_spawn child. gcc -O2 -o spawn_sig spawn_sig.c;
 * ./spawn_sig 2000 0; ./spawn_sig 2000 1 (BENCHMARKS.md, "The agent's spawn"). */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
#include <time.h>
extern char **environ;
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static void h(int s){(void)s;}
int main(int argc,char**argv){
  int n=atoi(argv[1]); int mode=atoi(argv[2]);
  for(int s=1;s<8;s++) if(s!=SIGKILL&&s!=SIGSTOP) signal(s==6?SIGTERM:s,h);
  char*args[]={"/bin/true",0};
  double tot=0;
  for(int i=0;i<n;i++){
    double t0=now(); pid_t pid;
    if(mode==0){ posix_spawn(&pid,"/bin/true",0,0,args,environ); }
    else { pid=vfork(); if(pid==0){ execve("/bin/true",args,environ); _exit(127);} }
    tot+=now()-t0;
    waitpid(pid,0,0);
  }
  printf("%s: %.1f us per spawn call\n", mode?"vfork+execve":"posix_spawn", tot/n);
}
