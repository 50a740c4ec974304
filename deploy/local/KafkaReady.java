// Readiness probe for the local broker or cluster: a real metadata round trip through
// AdminClient. Run with Java's single-file source launcher and the broker's jars on the class
// path:
//   java -cp '<lib>/*' deploy/local/KafkaReady.java <bootstrap> <timeout_s> [pids|-] [nodes]
// Exit 0 when describeCluster names at least `nodes` live brokers (default 1) and listTopics
// answers (prints the cluster id and node count to stderr), 1 on timeout, 2 if one of the
// comma-separated broker pids has died.

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;

public class KafkaReady {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: KafkaReady <bootstrap> <timeout_s> [pids|-] [nodes]");
            System.exit(64);
        }
        String bootstrap = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        List<Long> pids = new ArrayList<>();
        if (args.length > 2 && !args[2].equals("-")) {
            for (String pid : args[2].split(",")) {
                pids.add(Long.valueOf(pid));
            }
        }
        int wanted = args.length > 3 ? Integer.parseInt(args[3]) : 1;

        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "2000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "2000");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MS_CONFIG, "100");
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, "500");
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "creditlink-kafka-ready");

        String last = "no attempt";
        Admin admin = Admin.create(p); // never closed: the JVM exits right after
        while (System.nanoTime() < deadline) {
            for (Long pid : pids) {
                if (ProcessHandle.of(pid).map(h -> !h.isAlive()).orElse(true)) {
                    System.err.println("KafkaReady: broker process " + pid + " has exited");
                    System.exit(2);
                }
            }
            try {
                DescribeClusterResult c = admin.describeCluster();
                String id = c.clusterId().get(2, TimeUnit.SECONDS);
                int nodes = c.nodes().get(2, TimeUnit.SECONDS).size();
                int topics = admin.listTopics(new ListTopicsOptions().listInternal(true))
                        .names().get(2, TimeUnit.SECONDS).size();
                if (nodes >= wanted) {
                    System.err.println("KafkaReady: " + bootstrap + " answers: cluster " + id
                            + ", " + nodes + " node(s), " + topics + " topic(s)");
                    System.exit(0);
                }
                last = nodes + " of " + wanted + " node(s) in metadata";
            } catch (Exception e) {
                Throwable t = e.getCause() != null ? e.getCause() : e;
                last = t.getClass().getSimpleName() + ": " + t.getMessage();
            }
            Thread.sleep(250);
        }
        System.err.println("KafkaReady: " + bootstrap + " did not answer in time (" + last + ")");
        System.exit(1);
    }
}
