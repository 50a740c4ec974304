// Readiness probe for the local broker: a real metadata round trip through AdminClient.
// Run with Java's single-file source launcher and the broker's jars on the class path:
//   java -cp '<lib>/*' deploy/local/KafkaReady.java <bootstrap> <timeout_s> [broker_pid]
// Exit 0 when the broker answers describeCluster and listTopics (prints the cluster id and
// node count to stderr), 1 on timeout, 2 if broker_pid is given and that process has died.

import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;

public class KafkaReady {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: KafkaReady <bootstrap> <timeout_s> [broker_pid]");
            System.exit(64);
        }
        String bootstrap = args[0];
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(Long.parseLong(args[1]));
        Long pid = args.length > 2 ? Long.valueOf(args[2]) : null;

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
            if (pid != null && ProcessHandle.of(pid).map(h -> !h.isAlive()).orElse(true)) {
                System.err.println("KafkaReady: broker process " + pid + " has exited");
                System.exit(2);
            }
            try {
                DescribeClusterResult c = admin.describeCluster();
                String id = c.clusterId().get(2, TimeUnit.SECONDS);
                int nodes = c.nodes().get(2, TimeUnit.SECONDS).size();
                int topics = admin.listTopics(new ListTopicsOptions().listInternal(true))
                        .names().get(2, TimeUnit.SECONDS).size();
                if (nodes > 0) {
                    System.err.println("KafkaReady: " + bootstrap + " answers: cluster " + id
                            + ", " + nodes + " node(s), " + topics + " topic(s)");
                    System.exit(0);
                }
                last = "no nodes in metadata";
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
